import pytest
import torch

from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid

QUESTIONS = [
    "what is a cat ?",
    "why",
    "tell me a short story about the dog and the bird please",
    "write a poem",
    "how do i fix my code bug ?",
]


def _texts(model, system="you are helpful"):
    return [render_chat(model.tokenizer, q, system=system) for q in QUESTIONS]


def test_matches_hf_hidden_states_oracle(tiny):
    texts = _texts(tiny)
    acts = collect_resid(tiny, texts, layers=[0, 1], batch_size=2, progress=False)
    hf = tiny.original_model
    for i, text in enumerate(texts):
        enc = tiny.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = hf(**enc, output_hidden_states=True).hidden_states
        for j, layer in enumerate([0, 1]):
            # hidden_states[l + 1] is the output of block l (the last one gets HF's final norm)
            assert torch.allclose(acts[i, j], hs[layer + 1][0, -1], atol=1e-5)


def test_matches_run_with_cache_on_every_site(tiny):
    texts = _texts(tiny)[:2]
    for site in ("resid_pre", "resid_mid", "resid_post"):
        acts = collect_resid(tiny, texts, site=site, progress=False)
        for i, text in enumerate(texts):
            enc = tiny.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            names = [f"blocks.{layer}.hook_{site}" for layer in range(tiny.cfg.n_layers)]
            _, cache = tiny.run_with_cache(
                enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=names
            )
            for layer, name in enumerate(names):
                assert torch.allclose(acts[i, layer], cache[name][0, -1], atol=1e-5), (site, layer)


def test_padding_invariance(tiny):
    texts = _texts(tiny)
    batched = collect_resid(tiny, texts, batch_size=len(texts), progress=False)
    single = torch.cat([collect_resid(tiny, [t], progress=False) for t in texts])
    assert (batched - single).abs().max() < 1e-5


def test_order_and_dtype(tiny):
    texts = _texts(tiny)
    a = collect_resid(tiny, texts, batch_size=2, progress=False)
    b = collect_resid(tiny, texts[::-1], batch_size=3, progress=False)
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    assert a.shape == (len(texts), tiny.cfg.n_layers, tiny.cfg.d_model)
    assert (a - b.flip(0)).abs().max() < 1e-5


def test_negative_layers(tiny):
    texts = _texts(tiny)[:2]
    a = collect_resid(tiny, texts, layers=[-1], progress=False)
    b = collect_resid(tiny, texts, layers=[tiny.cfg.n_layers - 1], progress=False)
    assert torch.equal(a, b)


def test_bad_inputs(tiny):
    texts = _texts(tiny)[:1]
    with pytest.raises(ValueError, match="out of range"):
        collect_resid(tiny, texts, layers=[tiny.cfg.n_layers], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        collect_resid(tiny, texts, layers=[-tiny.cfg.n_layers - 1], progress=False)
    with pytest.raises(ValueError, match="unknown site"):
        collect_resid(tiny, texts, site="resid_mlp", progress=False)
    with pytest.raises(ValueError, match="at least one instruction"):
        collect_resid(tiny, [], progress=False)
    long_text = render_chat(tiny.tokenizer, " ".join(["cat"] * (tiny.cfg.n_ctx + 5)))
    with pytest.raises(ValueError, match="context"):
        collect_resid(tiny, [long_text], progress=False)


def test_hooks_removed_after_exception(tiny, monkeypatch):
    import icon2_lens.model.collect as collect

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(collect, "pad_left", boom)
    with pytest.raises(RuntimeError, match="boom"):
        collect_resid(tiny, _texts(tiny)[:1], progress=False)
    assert not any(hp.fwd_hooks for hp in tiny.hook_dict.values())


def test_tokenizer_without_pad_token(tiny):
    texts = _texts(tiny)[:3]
    expected = collect_resid(tiny, texts, batch_size=3, progress=False)
    tiny.tokenizer.pad_token = None
    try:
        got = collect_resid(tiny, texts, batch_size=3, progress=False)
    finally:
        tiny.tokenizer.pad_token = "<pad>"
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_fast_backend_matches_bridge(tiny, site):
    texts = [
        render_chat(tiny.tokenizer, q)
        for q in ["tell me a story", "why", "what is the best food for a dog"]
    ]
    for layers in ([0, 1, 2], [0, 1]):
        a = collect_resid(tiny, texts, layers=layers, site=site, progress=False)
        b = collect_resid(
            tiny, texts, layers=layers, site=site, progress=False, backend="fast", batch_size=2
        )
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_shared_prefix_gives_the_full_prompt_values(tiny, site, monkeypatch):
    from icon2_lens.model import twin as fast

    texts = _texts(tiny, system="you are a kind and helpful assistant who answers well")
    calls = []
    real = fast.prefix_cache
    monkeypatch.setattr(
        "icon2_lens.model.collect.prefix_cache",
        lambda twin, p: calls.append(len(p)) or real(twin, p),
    )
    bridge = collect_resid(tiny, texts, site=site, progress=False)
    shared = collect_resid(tiny, texts, site=site, progress=False, backend="fast", batch_size=2)
    plain = collect_resid(
        tiny, texts, site=site, progress=False, backend="fast", batch_size=2, share_prefix=False
    )
    assert len(calls) == 1 and calls[0] >= 8  # the system prompt was computed once, for all rows
    assert torch.allclose(shared, bridge, atol=1e-5)
    assert torch.allclose(shared, plain, atol=1e-5)
    # one prompt alone equals its row in the shared batch
    alone = collect_resid(
        tiny, texts[2:3], site=site, progress=False, backend="fast", share_prefix=False
    )
    assert torch.allclose(alone[0], shared[2], atol=1e-5)


def test_common_prefix_leaves_every_row_a_token():
    from icon2_lens.model.twin import common_prefix_len

    assert common_prefix_len([[5, 6, 7], [5, 6, 7]]) == 2
    assert common_prefix_len([[5, 6, 7], [5, 9]]) == 1
    assert common_prefix_len([[5], [5, 6]]) == 0
    assert common_prefix_len([[1, 2], [3, 4]]) == 0
