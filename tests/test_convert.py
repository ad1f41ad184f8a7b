import json
import math
import os
import pickle

import pytest
import torch
from transformers import GPT2LMHeadModel

from duilian import cli
from duilian.convert import (
    ConversionError,
    config_from_uer,
    convert_hf_to_uer,
    convert_uer_to_hf,
    hf_to_uer_state_dict,
    load_uer_checkpoint,
    uer_to_hf_state_dict,
)
from duilian.export import export_model
from duilian.model import build_model

V = 21128  # the vocabulary size (export ships vocab.txt, so the size must match)

# The exact UER names of a 2-layer GPT-2, written out from the spec (not derived from the map).
LAYER = [
    "self_attn.linear_layers.0.weight", "self_attn.linear_layers.0.bias",
    "self_attn.linear_layers.1.weight", "self_attn.linear_layers.1.bias",
    "self_attn.linear_layers.2.weight", "self_attn.linear_layers.2.bias",
    "self_attn.final_linear.weight", "self_attn.final_linear.bias",
    "layer_norm_1.gamma", "layer_norm_1.beta",
    "feed_forward.linear_1.weight", "feed_forward.linear_1.bias",
    "feed_forward.linear_2.weight", "feed_forward.linear_2.bias",
    "layer_norm_2.gamma", "layer_norm_2.beta",
]
ENCODER = {f"encoder.transformer.{i}.{n}" for i in range(2) for n in LAYER} | {
    "encoder.layer_norm.gamma", "encoder.layer_norm.beta",
}
EXPECTED_KEYS = {
    "old": ENCODER | {
        "embedding.word_embedding.weight", "embedding.position_embedding.weight", "target.output_layer.weight",
    },
    "new": ENCODER | {
        "embedding.word.embedding.weight", "embedding.pos.embedding.weight", "target.lm.output_layer.weight",
    },
}
WORD = {"old": "embedding.word_embedding.weight", "new": "embedding.word.embedding.weight"}
OUTPUT = {"old": "target.output_layer.weight", "new": "target.lm.output_layer.weight"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 (2 layers, hidden 64, 2 heads) as its HuggingFace export, and the export read back by
    transformers (what a conversion's output, read back the same way, must equal exactly)."""
    hf_dir = export_model(build_model("tiny", seed=0), tmp_path_factory.mktemp("tiny_hf"))
    return GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval(), hf_dir


def logits(model, ids):
    """Logits of a gpt.GPT (a tensor) or of transformers' GPT2LMHeadModel (an output holding them)."""
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return getattr(out, "logits", out)


def hand_built_uer(layout: str, hidden=8, positions=16, inner=32, layers=2, output=None, seed=0):
    """A UER state dict with random tensors under the spec's names and nn.Linear [out, in] shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    pos = {"old": "embedding.position_embedding.weight", "new": "embedding.pos.embedding.weight"}[layout]
    sd = {WORD[layout]: r(V, hidden), pos: r(positions, hidden),
          "encoder.layer_norm.gamma": r(hidden), "encoder.layer_norm.beta": r(hidden)}
    for i in range(layers):
        p = f"encoder.transformer.{i}."
        for j in range(3):
            sd[f"{p}self_attn.linear_layers.{j}.weight"] = r(hidden, hidden)
            sd[f"{p}self_attn.linear_layers.{j}.bias"] = r(hidden)
        sd[f"{p}self_attn.final_linear.weight"], sd[f"{p}self_attn.final_linear.bias"] = r(hidden, hidden), r(hidden)
        sd[f"{p}feed_forward.linear_1.weight"], sd[f"{p}feed_forward.linear_1.bias"] = r(inner, hidden), r(inner)
        sd[f"{p}feed_forward.linear_2.weight"], sd[f"{p}feed_forward.linear_2.bias"] = r(hidden, inner), r(hidden)
        for ln in ("layer_norm_1", "layer_norm_2"):
            sd[f"{p}{ln}.gamma"], sd[f"{p}{ln}.beta"] = r(hidden), r(hidden)
    if output == "tied":
        sd[OUTPUT[layout]] = sd[WORD[layout]].clone()
    elif output == "untied":
        sd[OUTPUT[layout]] = r(V, hidden)
    return sd


# --- HF -> UER -> HF ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["old", "new"])
def test_hf_to_uer_to_hf_gives_identical_logits(tiny, tmp_path, layout):
    model, hf_dir = tiny
    uer_file = convert_hf_to_uer(hf_dir, tmp_path / "uer.bin", layout=layout)
    back = convert_uer_to_hf(uer_file, tmp_path / "hf", heads=2)
    again = GPT2LMHeadModel.from_pretrained(str(back)).eval()
    ids = [101, 710, 3367, 3736, 1107, 118, 7942, 1383, 102]
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)
    assert again.lm_head.weight.data_ptr() == again.transformer.wte.weight.data_ptr()  # still tied


@pytest.mark.parametrize("layout", ["old", "new"])
def test_uer_names_match_the_spec_exactly(tiny, tmp_path, layout):
    _, hf_dir = tiny
    uer = torch.load(convert_hf_to_uer(hf_dir, tmp_path / "uer.bin", layout=layout), weights_only=True)
    assert set(uer) == EXPECTED_KEYS[layout]


def test_uer_tensors_are_the_reference_transforms(tiny):
    # Against UER-py's own convert_gpt2_from_uer_to_huggingface: c_attn = cat(Q, K, V).T, linears transposed.
    model, _ = tiny
    hf = model.state_dict()
    uer = hf_to_uer_state_dict(hf, layout="new")
    h = model.config.n_embd
    c_attn = hf["transformer.h.1.attn.c_attn.weight"]  # [H, 3H], Conv1D [in, out]
    for j in range(3):
        assert torch.equal(uer[f"encoder.transformer.1.self_attn.linear_layers.{j}.weight"],
                           c_attn[:, j * h:(j + 1) * h].T)
        assert torch.equal(uer[f"encoder.transformer.1.self_attn.linear_layers.{j}.bias"],
                           hf["transformer.h.1.attn.c_attn.bias"][j * h:(j + 1) * h])
    assert torch.equal(uer["encoder.transformer.0.feed_forward.linear_1.weight"],
                       hf["transformer.h.0.mlp.c_fc.weight"].T)
    assert uer["encoder.transformer.0.feed_forward.linear_1.weight"].shape == (4 * h, h)  # nn.Linear [out, in]
    assert torch.equal(uer["encoder.layer_norm.gamma"], hf["transformer.ln_f.weight"])
    assert torch.equal(uer["target.lm.output_layer.weight"], hf["transformer.wte.weight"])


# --- UER -> HF -> UER ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout,output", [("old", None), ("old", "tied"), ("new", "tied"), ("new", "untied")])
def test_hand_built_uer_round_trips_exactly(tmp_path, layout, output):
    original = hand_built_uer(layout, output=output)
    torch.save(original, tmp_path / "in.bin")
    hf_dir = convert_uer_to_hf(tmp_path / "in.bin", tmp_path / "hf", heads=2)
    config = GPT2LMHeadModel.from_pretrained(str(hf_dir)).config
    assert (config.n_layer, config.n_embd, config.n_head, config.n_positions, config.n_inner) == (2, 8, 2, 16, 32)
    assert config.tie_word_embeddings == (output != "untied")
    back = torch.load(convert_hf_to_uer(hf_dir, tmp_path / "out.bin", layout=layout), weights_only=True)
    assert set(back) == set(original) | {OUTPUT[layout]}  # the output layer is always written
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
    if output != "untied":
        assert torch.equal(back[OUTPUT[layout]], original[WORD[layout]])


def test_uer_without_output_layer_runs_like_the_tied_model(tmp_path):
    # The same weights with and without target.output_layer.weight give the same logits.
    sd = hand_built_uer("old")
    torch.save(sd, tmp_path / "a.bin")
    torch.save({**sd, "target.output_layer.weight": sd["embedding.word_embedding.weight"]}, tmp_path / "b.bin")
    a = GPT2LMHeadModel.from_pretrained(str(convert_uer_to_hf(tmp_path / "a.bin", tmp_path / "a", heads=2)))
    b = GPT2LMHeadModel.from_pretrained(str(convert_uer_to_hf(tmp_path / "b.bin", tmp_path / "b", heads=2)))
    torch.testing.assert_close(logits(a.eval(), [101, 5, 6]), logits(b.eval(), [101, 5, 6]), rtol=0, atol=0)


def test_bad_checkpoints_are_refused_with_the_reason():
    sd = hand_built_uer("new")
    with pytest.raises(ConversionError, match="--layers 3 given, but the checkpoint has 2"):
        uer_to_hf_state_dict(sd, layers=3)
    with pytest.raises(ConversionError, match="new UER names"):
        uer_to_hf_state_dict(sd, layout="old")
    with pytest.raises(ConversionError, match="lacks 1 tensor.*linear_2.bias"):
        uer_to_hf_state_dict({k: v for k, v in sd.items() if k != "encoder.transformer.1.feed_forward.linear_2.bias"})
    with pytest.raises(ConversionError, match="embedding.layer_norm.gamma"):
        uer_to_hf_state_dict({**sd, "embedding.layer_norm.gamma": torch.ones(8)})
    with pytest.raises(ConversionError, match="not a UER GPT-2"):
        uer_to_hf_state_dict({"transformer.wte.weight": torch.ones(2, 2)})
    hf, _ = uer_to_hf_state_dict(sd)
    with pytest.raises(ConversionError, match="layout"):
        hf_to_uer_state_dict(hf, layout="middle")


# --- heads: not in a UER file ---------------------------------------------------------------------


def test_heads_are_not_guessed_for_a_width_other_than_the_seeds(tmp_path):
    # A 2-layer 64-wide model used to become a 1-head model (64 / 64) that loads, runs and is wrong.
    torch.save(hand_built_uer("new", hidden=64, inner=256), tmp_path / "in.bin")
    with pytest.raises(ConversionError, match=r"do not record the number of attention heads.*hidden size 64.*"
                                              r"--heads N.*--config.*heads_num"):
        convert_uer_to_hf(tmp_path / "in.bin", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # refused before anything is written


def test_the_seeds_width_gets_the_seeds_12_heads():
    shapes = {"transformer.wte.weight": (10, 768), "transformer.wpe.weight": (16, 768),
              "transformer.h.0.mlp.c_fc.weight": (768, 3072)}
    hf = {name: torch.empty(shape) for name, shape in shapes.items()}
    assert config_from_uer(hf, layers=12, heads=None).n_head == 12
    assert config_from_uer(hf, layers=12, heads=6).n_head == 6  # told otherwise, as told
    with pytest.raises(ConversionError, match="not divisible by 5 heads"):
        config_from_uer(hf, layers=12, heads=5)
    with pytest.raises(ConversionError, match="at least 1"):
        config_from_uer(hf, layers=12, heads=0)


def uer_config(path, **fields):
    """A UER-py model config file (the keys of UER-py's models/gpt2/config.json)."""
    config = {"emb_size": 64, "feedforward_size": 256, "hidden_size": 64, "hidden_act": "gelu_fast",
              "heads_num": 4, "layers_num": 2, "max_seq_length": 128, "dropout": 0.1, **fields}
    path.write_text(json.dumps(config))
    return path


def test_heads_from_a_uer_config_file(tiny, tmp_path):
    model, hf_dir = tiny
    uer_file = convert_hf_to_uer(hf_dir, tmp_path / "uer.bin")
    back = convert_uer_to_hf(uer_file, tmp_path / "hf", uer_config=uer_config(tmp_path / "c.json", heads_num=2))
    again = GPT2LMHeadModel.from_pretrained(str(back)).eval()
    assert again.config.n_head == 2
    ids = [101, 710, 3367, 3736, 1107, 118, 7942, 1383, 102]
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)
    # the config's other sizes are checked against the checkpoint, and against --heads
    for fields, what in [(dict(hidden_size=768), "hidden_size 768, but the checkpoint has 64"),
                         (dict(layers_num=12), "layers_num 12, but the checkpoint has 2")]:
        with pytest.raises(ConversionError, match=what):
            config = uer_config(tmp_path / "c.json", heads_num=2, **fields)
            convert_uer_to_hf(uer_file, tmp_path / "x", uer_config=config)
    with pytest.raises(ConversionError, match="heads_num 2, but --heads says 4"):
        convert_uer_to_hf(uer_file, tmp_path / "x", heads=4, uer_config=uer_config(tmp_path / "c.json", heads_num=2))
    (tmp_path / "bad.json").write_text('{"hidden_size": 64}')
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(ConversionError, match="heads_num|cannot read"):
            convert_uer_to_hf(uer_file, tmp_path / "x", uer_config=bad)


# --- against UER-py's own forward -----------------------------------------------------------------


def uer_forward(sd: dict, ids: list[int], heads: int, layer_norm: str) -> torch.Tensor:
    """Logits [T, V] of a UER-py GPT-2 (pre-LayerNorm transformer, causal mask, gelu_fast, lm target),
    written from UER-py's layers on UER's own tensor names, with UER's LayerNorm or HF's."""

    def ln(x, name):
        g, b = sd[name + ".gamma"], sd[name + ".beta"]
        if layer_norm == "uer":  # uer/layers/layer_norm.py: unbiased std, eps outside the square root
            return g * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + b
        return torch.nn.functional.layer_norm(x, x.shape[-1:], g, b, eps=1e-5)

    def linear(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    T = len(ids)
    x = sd["embedding.word.embedding.weight"][ids] + sd["embedding.pos.embedding.weight"][:T]  # [T, H]
    H = x.shape[-1]
    hd = H // heads
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(count_layers(sd)):
        p = f"encoder.transformer.{i}."
        h = ln(x, p + "layer_norm_1")
        q, k, v = (linear(h, f"{p}self_attn.linear_layers.{j}").view(T, heads, hd).transpose(0, 1) for j in range(3))
        scores = (q @ k.transpose(1, 2) / math.sqrt(hd)).masked_fill(future, -10000.0)  # [heads, T, T]
        att = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, H)
        x = x + linear(att, p + "self_attn.final_linear")
        h = ln(x, p + "layer_norm_2")
        h = linear(h, p + "feed_forward.linear_1")
        h = 0.5 * h * (1 + torch.tanh(0.7978845608 * (h + 0.044715 * h ** 3)))  # UER's gelu_fast
        x = x + linear(h, p + "feed_forward.linear_2")
    return ln(x, "encoder.layer_norm") @ sd["target.lm.output_layer.weight"].T


def count_layers(sd):
    return 1 + max(int(n.split(".")[2]) for n in sd if n.startswith("encoder.transformer."))


def test_converted_logits_match_uer_style_forward_up_to_its_layer_norm(tiny, tmp_path):
    """The map is right when UER's forward, given HF's LayerNorm, gives HF's logits; UER's own LayerNorm
    (unbiased std, eps outside the root) alone moves them, by ~1/(2H) relative per norm (H = 64 here)."""
    model, hf_dir = tiny
    sd = torch.load(convert_hf_to_uer(hf_dir, tmp_path / "uer.bin"), weights_only=True)
    ids = [101, 710, 3367, 3736, 1107, 118, 7942, 1383, 102]
    hf = logits(model, ids)[0]
    with torch.no_grad():
        torch.testing.assert_close(uer_forward(sd, ids, 2, "hf"), hf, rtol=1e-4, atol=1e-4)
        gap = (uer_forward(sd, ids, 2, "uer") - hf).abs().max().item()
        # 3e-3 here: far above fp32 rounding (the "hf" run agrees to ~1e-6), and small, as documented
        assert 1e-4 < gap < 0.05, gap


# --- safe loading -------------------------------------------------------------------------------


class Payload:
    """Runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Plain:
    pass


def test_loader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"embedding.word.embedding.weight": torch.ones(2), "x": Payload(marker)}, f, protocol=2)
    torch.save({"w": torch.ones(2), "obj": Plain()}, tmp_path / "object.bin")
    for name in ("evil.bin", "object.bin"):
        with pytest.raises(ConversionError, match="refused"):
            load_uer_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_loader_wants_a_dict_of_tensors(tmp_path):
    torch.save({"w": torch.ones(2), "step": 5}, tmp_path / "mixed.bin")
    with pytest.raises(ConversionError, match="name -> tensor"):
        load_uer_checkpoint(tmp_path / "mixed.bin")
    with pytest.raises(ConversionError, match="no such"):
        load_uer_checkpoint(tmp_path / "missing.bin")


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def cli_main(monkeypatch):
    # Only this module's commands: the completeness of the map is test_cli's business.
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("convert", "export")})
    return cli.main


def test_cli_round_trip(tiny, tmp_path, cli_main, capsys):
    model, hf_dir = tiny
    assert cli_main(["convert", "--to", "uer", "--input", str(hf_dir), "--output", str(tmp_path / "m.bin"),
                     "--layout", "old"]) == 0
    assert "embedding.word_embedding.weight" in torch.load(tmp_path / "m.bin", weights_only=True)
    assert cli_main(["convert", "--to", "hf", "--input", str(tmp_path / "m.bin"), "--output", str(tmp_path / "hf"),
                     "--heads", "2", "--layers", "2"]) == 0
    again = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    torch.testing.assert_close(logits(again, [101, 8, 9]), logits(model, [101, 8, 9]), rtol=0, atol=0)
    # A wrong flag is an error with the reason, exit code 2.
    assert cli_main(["convert", "--to", "hf", "--input", str(tmp_path / "m.bin"), "--output", str(tmp_path / "x"),
                     "--layers", "5"]) == 2
    assert "5 given, but the checkpoint has 2 layers" in capsys.readouterr().err
    # No --heads for a width other than the seed's: refused with how to say it; --config says it too.
    assert cli_main(["convert", "--to", "hf", "--input", str(tmp_path / "m.bin"), "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--heads" in err and "--config" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()
    config = uer_config(tmp_path / "config.json", heads_num=2)
    assert cli_main(["convert", "--to", "hf", "--input", str(tmp_path / "m.bin"), "--output", str(tmp_path / "z"),
                     "--config", str(config)]) == 0
    assert json.loads((tmp_path / "z" / "config.json").read_text())["n_head"] == 2
    assert cli_main(["convert", "--to", "uer", "--input", str(hf_dir), "--output", str(tmp_path / "n.bin"),
                     "--config", str(config)]) == 2
    assert "apply to --to hf only" in capsys.readouterr().err
