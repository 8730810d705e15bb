import math

import pytest
import torch

from icon2_lens.consistency.scores import (
    score_consistency,
    scores_from_activations,
    wrap_instructions,
)
from icon2_lens.directions.set import DirectionSet
from icon2_lens.model.collect import collect_resid

INSTR = [
    "tell me a story",
    "how do i fix my code",
    "what is good food",
    "write a poem",
    "help me plan a trip",
]


def _sets(d=16, n_layers=3, names=("a", "b"), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in names:
        v = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=g), dim=-1)
        out.append(
            DirectionSet(
                criterion=name, layers=tuple(range(n_layers)), vectors=v, method="mean_diff"
            )
        )
    return out


def test_dot_is_mean_over_layers_then_max_over_criteria():
    sets = _sets()
    acts = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(1))
    res = scores_from_activations(acts, [0, 1, 2], sets, instructions=INSTR)
    for i in range(5):
        manual = [
            float(torch.stack([acts[i, k] @ ds.vectors[k] for k in range(3)]).mean()) for ds in sets
        ]
        assert res.scores[i].tolist() == pytest.approx(manual, rel=1e-5, abs=1e-5)
        assert res.best[i].item() == pytest.approx(max(manual), rel=1e-5, abs=1e-5)
        assert res.best_criterion[i] == ["a", "b"][max(range(2), key=lambda j: manual[j])]


def test_variants():
    sets = _sets()
    acts = torch.randn(6, 3, 16, generator=torch.Generator().manual_seed(2))
    ins = [str(i) for i in range(6)]
    cos = scores_from_activations(acts, [0, 1, 2], sets, instructions=ins, scoring="cosine")
    cos_scaled = scores_from_activations(
        acts * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1),
        [0, 1, 2],
        sets,
        instructions=ins,
        scoring="cosine",
    )
    assert torch.allclose(
        cos.scores, cos_scaled.scores, atol=1e-5
    )  # invariant to per-layer norm growth
    z = scores_from_activations(acts, [0, 1, 2], sets, instructions=ins, scoring="zscore")
    assert torch.allclose(z.scores.mean(0), torch.zeros(2), atol=1e-5)
    ctl = scores_from_activations(
        acts,
        [0, 1, 2],
        sets,
        instructions=ins,
        layers="control",
        control_layers={"a": [1], "b": [2]},
    )
    assert torch.allclose(ctl.scores[:, 0], acts[:, 1] @ sets[0].vectors[1], atol=1e-5)
    assert ctl.settings["layers_used"] == {"a": [1], "b": [2]}


def test_selection_fraction_and_threshold_are_deterministic():
    sets = _sets(names=("a",))
    acts = torch.zeros(10, 3, 16)
    acts[:, :, :] = sets[0].vectors.unsqueeze(0) * torch.tensor(
        [3, 1, 4, 1, 5, 9, 2, 6, 5, 3.0]
    ).view(10, 1, 1)
    res = scores_from_activations(acts, [0, 1, 2], sets, instructions=[str(i) for i in range(10)])
    sel = res.select(fraction=0.3)
    assert sel.kept == [5, 7, 4]  # 9, 6, then the first of the two 5s
    assert res.select(fraction=0.01).kept == [5]  # at least one
    thr = res.select(threshold=4.5)
    assert thr.kept == [5, 7, 4, 8] and thr.cutoff == pytest.approx(5.0)
    assert res.select(threshold=100.0).kept == [] and math.isnan(res.select(threshold=100.0).cutoff)
    table = res.table(sel)
    assert table["kept"].sum() == 3
    top, bottom = res.examples(2)
    assert list(top["instruction"]) == ["5", "7"] and sorted(bottom["instruction"]) == ["1", "3"]


def test_model_scores_equal_scores_from_cached_activations(tiny):
    sets = _sets()
    res = score_consistency(tiny, INSTR, sets, progress=False)
    acts = collect_resid(tiny, wrap_instructions(tiny.tokenizer, INSTR), progress=False)
    ref = scores_from_activations(acts, [0, 1, 2], sets, instructions=INSTR)
    assert torch.allclose(res.scores, ref.scores, rtol=1e-4, atol=1e-3)
    exact = score_consistency(tiny, INSTR, sets, progress=False, backend="bridge")
    assert torch.equal(exact.scores, ref.scores)
    # a direction planted along instruction 2's own activations makes it the most consistent
    planted = DirectionSet(
        criterion="planted",
        layers=(0, 1, 2),
        method="mean_diff",
        vectors=torch.nn.functional.normalize(acts[2], dim=-1),
    )
    res2 = score_consistency(tiny, INSTR, [planted], scoring="cosine", progress=False)
    assert res2.select(fraction=0.2).kept == [2]


def test_bad_input(tiny):
    sets = _sets()
    with pytest.raises(ValueError, match="another model"):
        score_consistency(tiny, INSTR, _sets(d=8), progress=False)
    with pytest.raises(ValueError, match="no instructions"):
        score_consistency(tiny, [], sets, progress=False)
    with pytest.raises(ValueError, match="control"):
        score_consistency(tiny, INSTR, sets, layers="control", progress=False)
    with pytest.raises(ValueError, match="scoring"):
        scores_from_activations(
            torch.zeros(1, 3, 16), [0, 1, 2], sets, instructions=["x"], scoring="l2"
        )
    with pytest.raises(ValueError, match="fraction"):
        scores_from_activations(torch.zeros(1, 3, 16), [0, 1, 2], sets, instructions=["x"]).select(
            fraction=0.0
        )


def test_quota_balance_gives_every_criterion_an_equal_share_of_its_best():
    from icon2_lens.consistency.scores import ConsistencyScores

    g = torch.Generator().manual_seed(0)
    raw = torch.randn(60, 3, generator=g)
    raw[:, 0] += 5.0  # criterion "a" is the argmax of every instruction, as harmlessness is
    s = ConsistencyScores([f"i{k}" for k in range(60)], ["a", "b", "c"], raw)
    plain = s.select(fraction=0.2)
    assert set(plain.criteria) == {"a"}
    quota = s.select(fraction=0.2, balance="quota")
    assert len(quota.kept) == len(plain.kept) == 12 and len(set(quota.kept)) == 12
    assert {c: quota.criteria.count(c) for c in "abc"} == {"a": 4, "b": 4, "c": 4}
    for c in "abc":
        j = "abc".index(c)
        mine = [i for i, k in zip(quota.kept, quota.criteria) if k == c]
        # each criterion took instructions it ranks near its top (earlier picks of others aside)
        top = torch.argsort(raw[:, j], descending=True)[:12].tolist()
        assert set(mine) <= set(top)
    assert quota == s.select(fraction=0.2, balance="quota")  # deterministic
    with pytest.raises(ValueError, match="fraction, not threshold"):
        s.select(threshold=0.0, balance="quota")
    with pytest.raises(ValueError, match="unknown balance"):
        s.select(balance="even")


def test_a_finished_filter_is_reused_only_for_the_same_inputs(tiny, tmp_path):
    from icon2_lens.consistency.filter import FilterConfig, run_filter
    from icon2_lens.testing import tiny_model

    sets = {ds.criterion: ds for ds in _sets()}
    config = FilterConfig(fraction=0.4)
    kept = run_filter(tiny, INSTR, sets, None, config, tmp_path, progress=False, png=False)
    marker = (tmp_path / "filter.json").read_bytes()
    again = run_filter(tiny, INSTR, sets, None, config, tmp_path, progress=False, png=False)
    assert again == kept and (tmp_path / "filter.json").read_bytes() == marker
    other_sets = {ds.criterion: ds for ds in _sets(seed=1)}
    for key, call in {
        "instructions_sha256": (tiny, INSTR[:4], sets, config),
        "direction_sets": (tiny, INSTR, other_sets, config),
        "config": (tiny, INSTR, sets, FilterConfig(fraction=0.6)),
        "model_fingerprint": (tiny_model(seed=1), INSTR, sets, config),
    }.items():
        model, ins, ds, cfg = call
        with pytest.raises(ValueError, match=rf"other inputs \(differences in: .*{key}"):
            run_filter(model, ins, ds, None, cfg, tmp_path, progress=False, png=False)
    # the batch size changes nothing but float rounding: still reused
    assert (
        run_filter(
            tiny, INSTR, sets, None, FilterConfig(fraction=0.4, batch_size=2), tmp_path, png=False
        )
        == kept
    )
