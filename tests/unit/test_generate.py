import pytest
import torch

from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import Decoding, generate, generate_rows, stop_token_ids
from icon2_lens.model.load import model_fingerprint
from icon2_lens.model.twin import block_modules, fast_twin

QUESTIONS = [
    "tell me a story",
    "how do i fix my code",
    "what is good food",
    "write a short poem about the cat",
]
SAMPLE = Decoding(max_new_tokens=10, do_sample=True, seed=3)


def _ds(model, site="resid_post", norm=50.0):
    g = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(
        torch.randn(model.cfg.n_layers, model.cfg.d_model, generator=g), dim=-1
    )
    stats = tuple({"mean_resid_norm": norm} for _ in range(model.cfg.n_layers))
    return DirectionSet(
        criterion="toy",
        layers=tuple(range(model.cfg.n_layers)),
        vectors=v,
        site=site,
        method="mean_diff",
        stats=stats,
    )


def _rows(model):
    return encode_prompts(model.tokenizer, [render_chat(model.tokenizer, q) for q in QUESTIONS])


def _ids(gens):
    return [g.token_ids for g in gens]


@pytest.mark.parametrize("positions", ["all", "generated"])
@pytest.mark.parametrize("gamma", [0.0, 0.4])
def test_backends_and_cache_agree(tiny, positions, gamma):
    spec = SteeringSpec(directions=_ds(tiny), gamma=gamma, positions=positions, prompt_len=1)
    outs = [
        _ids(
            generate_rows(
                tiny,
                _rows(tiny),
                Decoding(max_new_tokens=10, do_sample=True, seed=3, use_cache=c),
                steering=[spec],
                backend=b,
            )
        )
        for b in ("fast", "bridge")
        for c in (True, False)
    ]
    assert all(o == outs[0] for o in outs)
    assert sum(len(t) for t in outs[0]) > 0


def test_gamma_zero_equals_unsteered(tiny):
    base = _ids(generate_rows(tiny, _rows(tiny), SAMPLE))
    zero = _ids(
        generate_rows(
            tiny, _rows(tiny), SAMPLE, steering=[SteeringSpec(directions=_ds(tiny), gamma=0.0)]
        )
    )
    steered = _ids(
        generate_rows(
            tiny, _rows(tiny), SAMPLE, steering=[SteeringSpec(directions=_ds(tiny), gamma=0.5)]
        )
    )
    assert base == zero
    assert steered != base


def test_per_row_gamma_matches_separate_batches(tiny):
    rows = _rows(tiny)
    ds = _ds(tiny)
    seeds = list(range(len(rows)))
    both = generate_rows(
        tiny,
        rows + rows,
        SAMPLE,
        row_seeds=seeds + seeds,
        steering=[SteeringSpec(directions=ds, gamma=[0.3] * 4 + [-0.3] * 4)],
    )
    pos = generate_rows(tiny, rows, SAMPLE, steering=[SteeringSpec(directions=ds, gamma=0.3)])
    neg = generate_rows(tiny, rows, SAMPLE, steering=[SteeringSpec(directions=ds, gamma=-0.3)])
    assert _ids(both) == _ids(pos) + _ids(neg)


def test_row_output_does_not_depend_on_batch(tiny):
    rows = _rows(tiny)
    together = generate_rows(tiny, rows, SAMPLE)
    alone = [generate_rows(tiny, [r], SAMPLE, row_seeds=[i])[0] for i, r in enumerate(rows)]
    assert _ids(together) == _ids(alone)
    batched = generate(
        tiny, [render_chat(tiny.tokenizer, q) for q in QUESTIONS], SAMPLE, batch_size=3
    )
    assert _ids(batched) == _ids(together)


def test_stops_at_end_of_turn_and_decodes_new_tokens_only(tiny):
    tok = tiny.tokenizer
    stops = stop_token_ids(tok)
    assert tok.convert_tokens_to_ids("<end>") in stops and tok.eos_token_id in stops
    for g in generate_rows(tiny, _rows(tiny), Decoding(max_new_tokens=30, do_sample=True, seed=0)):
        assert not set(g.token_ids) & stops
        assert g.finished or len(g.token_ids) == 30
        assert "assistant :" not in g.text
        assert g.text == tok.decode(g.token_ids, skip_special_tokens=True).strip()


def test_twin_shares_weights_and_model_is_untouched(tiny):
    before = model_fingerprint(tiny)
    twin = fast_twin(tiny)
    assert twin is not None and fast_twin(tiny) is twin
    shared = {p.data_ptr() for p in tiny.original_model.parameters()}
    assert all(p.data_ptr() in shared for p in twin.parameters())
    generate_rows(
        tiny, _rows(tiny), SAMPLE, steering=[SteeringSpec(directions=_ds(tiny), gamma=0.5)]
    )
    assert model_fingerprint(tiny) == before


def test_hooks_removed_after_an_exception(tiny, monkeypatch):
    import importlib

    gen = importlib.import_module("icon2_lens.model.generate")

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(gen, "_pick", boom)
    spec = SteeringSpec(directions=_ds(tiny), gamma=0.5)
    for backend in ("fast", "bridge"):
        with pytest.raises(RuntimeError, match="boom"):
            generate_rows(tiny, _rows(tiny), SAMPLE, steering=[spec], backend=backend)
    layers = block_modules(tiny, fast_twin(tiny))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in layers)


def test_resid_pre_steering_agrees_across_backends(tiny):
    spec = SteeringSpec(directions=_ds(tiny, site="resid_pre"), gamma=0.4)
    a = generate_rows(tiny, _rows(tiny), SAMPLE, steering=[spec], backend="fast")
    b = generate_rows(tiny, _rows(tiny), SAMPLE, steering=[spec], backend="bridge")
    assert _ids(a) == _ids(b)


def test_bad_input(tiny):
    rows = _rows(tiny)
    with pytest.raises(ValueError, match="context"):
        generate_rows(tiny, rows, Decoding(max_new_tokens=200))
    with pytest.raises(ValueError, match="backend"):
        generate_rows(tiny, rows, SAMPLE, backend="gpu")
    with pytest.raises(ValueError, match="resid_mid"):
        generate_rows(
            tiny,
            rows,
            SAMPLE,
            backend="fast",
            steering=[SteeringSpec(directions=_ds(tiny, site="resid_mid"), gamma=0.1)],
        )
    with pytest.raises(ValueError, match="per-row gammas"):
        generate_rows(
            tiny, rows, SAMPLE, steering=[SteeringSpec(directions=_ds(tiny), gamma=[0.1, 0.2])]
        )
    with pytest.raises(ValueError, match="max_new_tokens"):
        Decoding(max_new_tokens=0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(tiny, [], SAMPLE)
