import os
import pickle

import pytest
import torch
from transformers import GPT2LMHeadModel

from duilian import cli
from duilian.convert import (
    ConversionError,
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
    """A tiny random GPT-2 (2 layers, hidden 64, 2 heads) and its HuggingFace export."""
    torch.set_num_threads(1)
    model = build_model("tiny", seed=0).eval()
    return model, export_model(model, tmp_path_factory.mktemp("tiny_hf"))


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


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
        assert torch.equal(uer[f"encoder.transformer.1.self_attn.linear_layers.{j}.weight"], c_attn[:, j * h:(j + 1) * h].T)
        assert torch.equal(uer[f"encoder.transformer.1.self_attn.linear_layers.{j}.bias"],
                           hf["transformer.h.1.attn.c_attn.bias"][j * h:(j + 1) * h])
    assert torch.equal(uer["encoder.transformer.0.feed_forward.linear_1.weight"], hf["transformer.h.0.mlp.c_fc.weight"].T)
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
