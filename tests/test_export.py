import json
import os
import stat

import pytest
import torch
from transformers import GPT2LMHeadModel

from duilian import cli
from duilian.export import export_model, seed_snippet_check
from duilian.model import build_model
from duilian.tokenizer import VOCAB_PATH, Tokenizer, default_tokenizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = build_model("tiny", seed=0).eval()
    return model, export_model(model, tmp_path_factory.mktemp("export") / "model")


def test_the_seed_snippet_runs_verbatim_on_an_export(exported):
    _, d = exported
    d = str(d)
    # The seed model card's code, as is.
    from transformers import BertTokenizer, GPT2LMHeadModel, TextGenerationPipeline
    tokenizer = BertTokenizer.from_pretrained(d)
    model = GPT2LMHeadModel.from_pretrained(d)
    text_generator = TextGenerationPipeline(model, tokenizer)
    out = text_generator("[CLS]丹 枫 江 冷 人 初 去 -", max_length=25, do_sample=True)

    assert out[0]["generated_text"].startswith("[CLS]丹 枫 江 冷 人 初 去 -")
    assert len(out[0]["generated_text"]) > len("[CLS]丹 枫 江 冷 人 初 去 -")
    # The tokenizer is the character-level BERT one duilian uses.
    assert tokenizer.convert_tokens_to_ids(list("丹枫-")) == default_tokenizer().encode_chars("丹枫-")


def test_export_files_and_ids(exported):
    model, d = exported
    config = json.loads((d / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (101, 102, 0)
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["activation_function"] == "gelu_new"
    assert (d / "model.safetensors").is_file()
    assert (d / "vocab.txt").read_bytes() == VOCAB_PATH.read_bytes()
    gen = json.loads((d / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"], gen["do_sample"]) == (101, 102, 0, True)
    assert gen["max_length"] <= config["n_positions"] and "max_new_tokens" not in gen  # would override max_length=25
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizer"
    # The weights load back bit for bit, tied.
    again = GPT2LMHeadModel.from_pretrained(str(d))
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert again.lm_head.weight.data_ptr() == again.transformer.wte.weight.data_ptr()


def test_fp16_export_is_half_the_size_and_leaves_the_model_alone(exported, tmp_path):
    model, d = exported
    half = export_model(model, tmp_path / "fp16", dtype=torch.float16)
    ratio = (half / "model.safetensors").stat().st_size / (d / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast
    loaded = GPT2LMHeadModel.from_pretrained(str(half), dtype=torch.float16)
    torch.testing.assert_close(loaded.transformer.wte.weight, model.transformer.wte.weight.half())


def test_sharded_export_loads(exported, tmp_path):
    model, _ = exported
    d = export_model(model, tmp_path / "sharded", max_shard_size="2MB")
    assert len(list(d.glob("*.safetensors"))) > 1 and (d / "model.safetensors.index.json").is_file()
    again = GPT2LMHeadModel.from_pretrained(str(d))
    assert torch.equal(again.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)


def test_exporting_over_an_export_replaces_its_weights(exported, tmp_path):
    # A stale model.safetensors next to a new shard index would be what from_pretrained loads.
    model, _ = exported
    other = build_model("tiny", seed=1)
    export_model(model, tmp_path / "m")
    export_model(other, tmp_path / "m", max_shard_size="2MB")
    assert not (tmp_path / "m" / "model.safetensors").exists()
    again = GPT2LMHeadModel.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(again.transformer.wpe.weight, other.transformer.wpe.weight)
    export_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").glob("model*")) == ["model.safetensors"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_every_file_gets_the_umask_mode(exported, tmp_path, umask):
    # safetensors leaves its files 0600 while the json files get 0644: every file must follow the umask,
    # also when an export replaces one (a replaced file would otherwise keep its old mode).
    model, _ = exported
    old = os.umask(umask)
    try:
        for out in (tmp_path / "one", tmp_path / "sharded"):
            export_model(model, out)
            for path in out.iterdir():
                path.chmod(0o600)  # stale modes that the next export must not keep
            export_model(model, out, max_shard_size="2MB" if out.name == "sharded" else None)
            files = sorted(out.iterdir())
            assert {p.name for p in files} >= {"config.json", "vocab.txt", "tokenizer_config.json"}
            assert any(p.name.endswith(".safetensors") for p in files)
            for path in files:
                assert path.is_file(), path  # and no probe or temporary file is left behind
                assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path.name, oct(path.stat().st_mode))
    finally:
        os.umask(old)


def test_vocabulary_size_must_match(tmp_path):
    small = Tokenizer(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "-"))  # a vocabulary, but small
    with pytest.raises(ValueError, match="6 tokens but the model has vocab_size 21128"):
        export_model(build_model("tiny"), tmp_path / "out", tokenizer=small)


def always(token_id: int, seed: int = 0) -> GPT2LMHeadModel:
    """A tiny model that predicts `token_id` everywhere: ln_f outputs a fixed vector that only that
    token's (tied) embedding row points along."""
    model = build_model("tiny", seed=seed).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[token_id, 0] = 30.0
    return model


def test_seed_snippet_check_reads_the_continuation(tmp_path):
    tok = default_tokenizer()
    uppers = ["丹枫江冷人初去", "春风得意"]
    # Always 春: a 下联-shaped run of Han characters that never stops and repeats one character.
    d = export_model(always(tok.id("春")), tmp_path / "chun")
    report = seed_snippet_check(d, uppers, n=5)
    assert report["n"] == 2 and report["starts_ok"] == 1.0
    assert report["stops_at_length"] == 0.0 and report["form_valid"] == 0.0
    assert report["examples"][0]["lower"] == "春" * 7
    assert report["examples"][0]["generated_text"].startswith("[CLS]丹 枫 江 冷 人 初 去 -")
    # Always [SEP]: nothing before the special token.
    d = export_model(always(tok.sep_id), tmp_path / "sep")
    report = seed_snippet_check(d, uppers, n=1)
    assert report["n"] == 1 and report["starts_ok"] == 0.0 and report["examples"][0]["lower"] == ""


def test_cli_export_from_a_model_directory(exported, tmp_path, monkeypatch, capsys):
    # Only this module's commands: the completeness of the map is test_cli's business.
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("convert", "export")})
    _, d = exported
    out = tmp_path / "fp16"
    assert cli.main(["export", "--checkpoint", str(d), "--out", str(out), "--dtype", "float16"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"  # transformers 4 names it torch_dtype
    assert cli.main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no checkpoint or run directory" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(out)]) == 2
    assert "cannot read a model from" in capsys.readouterr().err


def test_cli_export_from_a_run_directory_uses_final_pt(tmp_path, monkeypatch):
    from duilian import train
    monkeypatch.setattr(cli, "COMMANDS", {k: cli.COMMANDS[k] for k in ("convert", "export")})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    from duilian.dataset import write_dataset

    write_dataset(tmp_path / "data", {"train": [("春风", "秋月")]}, default_tokenizer(), seq_len=64)
    cfg = train.TrainConfig(data=str(tmp_path / "data"), out=str(run), preset="tiny")
    (run / "config.json").write_text(json.dumps({"preset": "tiny"}))  # a run's own config.json is not a model
    model = build_model("tiny", seed=1).eval()
    train.save_final(run, 10, model, cfg, {})
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    again = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    assert torch.equal(again.transformer.wpe.weight, model.transformer.wpe.weight)
    # The checkpoint file itself works too.
    assert cli.main(["export", "--checkpoint", str(run / "final.pt"), "--out", str(tmp_path / "hf2")]) == 0
