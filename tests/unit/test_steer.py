import pytest
import torch

from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec, make_steering_hooks, steer


def _ds(model, layers=None, norm=4.0):
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(
        torch.randn(len(layers), model.cfg.d_model, generator=g), dim=-1
    )
    stats = tuple({"mean_resid_norm": norm * (1 + i)} for i in range(len(layers)))
    return DirectionSet(criterion="toy", layers=layers, vectors=v, method="mean_diff", stats=stats)


IDS = torch.tensor([[1, 5, 6, 7, 8], [0, 1, 9, 10, 11]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])


def test_gamma_zero_is_exactly_unsteered(tiny):
    base = tiny(IDS, attention_mask=MASK)
    with steer(tiny, SteeringSpec(directions=_ds(tiny), gamma=0.0)):
        zero = tiny(IDS, attention_mask=MASK)
    assert torch.equal(base, zero)


def test_adds_gamma_times_scaled_direction(tiny):
    ds = _ds(tiny, layers=[1])
    name = "blocks.1.hook_resid_post"
    _, base = tiny.run_with_cache(IDS, attention_mask=MASK, names_filter=[name])
    for unit, scale in (("relative", 4.0), ("absolute", 1.0)):
        with steer(tiny, SteeringSpec(directions=ds, gamma=0.5, unit=unit)):
            _, cache = tiny.run_with_cache(IDS, attention_mask=MASK, names_filter=[name])
        expected = base[name] + 0.5 * scale * ds[1]
        assert torch.allclose(cache[name], expected, atol=1e-5)


def test_per_row_gamma_matches_separate_runs(tiny):
    ds = _ds(tiny)
    with steer(tiny, SteeringSpec(directions=ds, gamma=[0.3, -0.2])):
        both = tiny(IDS, attention_mask=MASK)
    for row, g in ((0, 0.3), (1, -0.2)):
        with steer(tiny, SteeringSpec(directions=ds, gamma=g)):
            alone = tiny(IDS[row : row + 1], attention_mask=MASK[row : row + 1])
        assert torch.allclose(both[row : row + 1][:, -1], alone[:, -1], atol=1e-4)


def test_several_directions_add_up(tiny):
    a, b = _ds(tiny, layers=[0]), _ds(tiny, layers=[0], norm=2.0)
    name = "blocks.0.hook_resid_post"
    _, base = tiny.run_with_cache(IDS, names_filter=[name])
    with steer(tiny, SteeringSpec(directions=a, gamma=0.1), SteeringSpec(directions=b, gamma=-0.3)):
        _, cache = tiny.run_with_cache(IDS, names_filter=[name])
    expected = base[name] + 0.1 * 4.0 * a[0] - 0.3 * 2.0 * b[0]
    assert torch.allclose(cache[name], expected, atol=1e-5)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_kv_cache_and_full_rerun_generate_the_same(tiny, positions):
    ds = _ds(tiny)
    outs = []
    for cache in (True, False):
        spec = SteeringSpec(directions=ds, gamma=0.8, positions=positions, prompt_len=IDS.shape[1])
        with steer(tiny, spec):
            outs.append(
                tiny.generate(
                    IDS,
                    attention_mask=MASK,
                    max_new_tokens=6,
                    do_sample=False,
                    use_past_kv_cache=cache,
                    stop_at_eos=False,
                    verbose=False,
                    return_type="tokens",
                )
            )
    assert torch.equal(outs[0], outs[1])
    with steer(tiny, SteeringSpec(directions=ds, gamma=0.0)):
        plain = tiny.generate(
            IDS,
            attention_mask=MASK,
            max_new_tokens=6,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            return_type="tokens",
        )
    assert not torch.equal(outs[0], plain)  # the steering really changed the generation


def test_generated_positions_leave_the_prompt_alone(tiny):
    ds = _ds(tiny)
    base = tiny(IDS, attention_mask=MASK)
    spec = SteeringSpec(directions=ds, gamma=1.0, positions="generated", prompt_len=IDS.shape[1])
    with steer(tiny, spec):
        steered = tiny(IDS, attention_mask=MASK)
    real = MASK[:, :-1].bool()  # padded positions carry no meaning
    assert torch.equal(
        steered[:, :-1][real], base[:, :-1][real]
    )  # earlier prompt positions unchanged
    assert not torch.allclose(steered[:, -1], base[:, -1])  # the last one drives token 1: steered


def test_hooks_removed_after_exception(tiny):
    with (
        pytest.raises(RuntimeError, match="inside"),
        steer(tiny, SteeringSpec(directions=_ds(tiny), gamma=1.0)),
    ):
        assert any(hp.fwd_hooks for hp in tiny.hook_dict.values())
        raise RuntimeError("inside")
    assert not any(hp.fwd_hooks for hp in tiny.hook_dict.values())


def test_never_mutates_weights(tiny):
    before = {k: v.clone() for k, v in tiny.original_model.state_dict().items()}
    with steer(tiny, SteeringSpec(directions=_ds(tiny), gamma=2.0)):
        tiny(IDS, attention_mask=MASK)
    after = tiny.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_specs(tiny):
    ds = _ds(tiny)
    for bad in (float("nan"), float("inf"), [0.1, float("nan")], []):
        with pytest.raises(ValueError, match="finite"):
            SteeringSpec(directions=ds, gamma=bad)
    with pytest.raises(ValueError, match="not in the"):
        SteeringSpec(directions=ds, gamma=0.1, layers=[7])
    with pytest.raises(ValueError, match="prompt_len"):
        SteeringSpec(directions=ds, gamma=0.1, positions="generated")
    with pytest.raises((ValueError, TypeError)):  # beartype checks the Literal first under pytest
        SteeringSpec(directions=ds, gamma=0.1, unit="sigma")
    wide = DirectionSet(criterion="w", layers=(0,), vectors=torch.eye(1, 32), method="mean_diff")
    with pytest.raises(ValueError, match="another model"):
        make_steering_hooks(tiny, SteeringSpec(directions=wide, gamma=0.1, unit="absolute"))
    deep = DirectionSet(criterion="d", layers=(0, 9), vectors=torch.eye(2, 16), method="mean_diff")
    with pytest.raises(ValueError, match="has 3 layers"):
        make_steering_hooks(tiny, SteeringSpec(directions=deep, gamma=0.1, unit="absolute"))
    assert not any(hp.fwd_hooks for hp in tiny.hook_dict.values())
