import torch

from duilian.model import PRESETS, build_model, count_parameters, gpt2_config


def test_base_is_the_seed_configuration():
    c = gpt2_config("base")
    assert (c.n_layer, c.n_embd, c.n_head, c.n_inner, c.n_positions, c.vocab_size) == (12, 768, 12, 3072, 1024, 21128)
    assert c.activation_function == "gelu_new" and c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (101, 102, 0)


def test_base_parameter_count_matches_gpt2_base_with_this_vocab():
    # wte 21128x768 + wpe 1024x768 + 12 blocks x (12*768^2 + 13*768) + ln_f 2*768; lm_head tied.
    h, v, p = 768, 21128, 1024
    expected = v * h + p * h + 12 * (12 * h * h + 13 * h) + 2 * h
    assert count_parameters(build_model("base")) == expected


def test_output_layer_is_tied_and_small_presets_fit_couplets():
    m = build_model("tiny", seed=0)
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    for name, p in PRESETS.items():
        assert p.n_positions >= 2 * 32 + 3 + 2, name  # longest couplet, plus the transformers-5 prompt form


def test_seeded_init_is_reproducible():
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_deeper_model_grown_from_a_shallower_one_computes_the_same_logits(tmp_path):
    """init_from_model_dir into a deeper model of the same width: the source's blocks in order, a zero-output copy
    after each group, so the grown model's logits equal the source's (until training moves the copies)."""
    from duilian.export import export_model
    from duilian.model import Preset, grown_layers, init_from_model_dir
    from duilian.tokenizer import default_tokenizer

    assert grown_layers(4, 6) == [(0, False), (1, False), (1, True), (2, False), (3, False), (3, True)]
    assert [s for s, _ in grown_layers(2, 5)] == sorted(s for s, _ in grown_layers(2, 5))
    source = build_model("tiny", seed=1).eval()
    src_dir = export_model(source, tmp_path / "src")
    deep = build_model(Preset(n_layer=5, n_embd=64, n_head=2, n_positions=128), dropout=0.0, seed=2).eval()
    got = init_from_model_dir(deep, src_dir, default_tokenizer().tokens)
    assert (got["blocks"], got["new_blocks"]) == (2, 3)
    ids = torch.randint(0, 21128, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(deep(ids), source(ids), rtol=1e-5, atol=1e-5)
    new = [i for i, (_, is_new) in enumerate(grown_layers(2, 5)) if is_new]
    assert all(deep.transformer.h[i].mlp.c_proj.weight.abs().sum() == 0 for i in new)
    assert all(deep.transformer.h[i].mlp.c_fc.weight.abs().sum() > 0 for i in new)  # the rest is copied: it learns
