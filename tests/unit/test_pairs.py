import json
from dataclasses import replace

import pytest
import torch

from icon2_lens._files import read_jsonl
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec
from icon2_lens.judge.rules import degeneracy, repetition_rate
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import generate_rows
from icon2_lens.pairs.icon2 import PairConfig, generate_pairs
from icon2_lens.testing import TINY_REQUESTS

WORDS = list(TINY_REQUESTS[:8])


def _sets(model, names=("a", "b"), d=None):
    d = d or model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in names:
        v = torch.nn.functional.normalize(torch.randn(model.cfg.n_layers, d, generator=g), dim=-1)
        stats = tuple({"mean_resid_norm": 50.0} for _ in range(model.cfg.n_layers))
        out[name] = DirectionSet(
            criterion=name,
            layers=tuple(range(model.cfg.n_layers)),
            vectors=v,
            method="mean_diff",
            stats=stats,
        )
    return out


def _kept():
    return [KeptInstruction(10 + i, w, "ab"[i % 2], float(i)) for i, w in enumerate(WORDS)]


CFG = PairConfig(
    gamma_pos=0.4,
    gamma_neg=-0.4,
    layers=(0, 1, 2),
    batch_size=3,
    max_repetition=0.9,
    max_new_tokens=8,
    do_sample=True,
    seed=1,
)


def test_records_are_trl_conversational_with_provenance(tiny):
    res = generate_pairs(tiny, _kept(), _sets(tiny), CFG, progress=False)
    assert res.counts["done"] == len(WORDS) == len(res.records) + len(res.dropped)
    assert res.records, res.counts
    for r in res.records:
        assert r["prompt"] == [{"role": "user", "content": WORDS[r["icon2_index"] - 10]}]
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert (
            r["icon2_gamma_pos"] == 0.4
            and r["icon2_gamma_neg"] == -0.4
            and r["icon2_layers"] == [0, 1, 2]
        )
        for key in (
            "icon2_criterion",
            "icon2_site",
            "icon2_direction_id",
            "icon2_seed",
            "icon2_model",
            "icon2_consistency",
        ):
            assert key in r
        json.dumps(r)


def test_pairs_equal_separately_steered_generations(tiny):
    """Mixed criteria and both signs in one batch give what each steering alone gives."""
    sets = _sets(tiny)
    kept = _kept()[:3]
    res = generate_pairs(tiny, kept, sets, CFG, progress=False)
    by_index = {r["icon2_index"]: r for r in res.records + res.dropped}
    for item in kept:
        rows = encode_prompts(tiny.tokenizer, [render_chat(tiny.tokenizer, item.instruction)])
        for sign, key in ((0.4, "chosen"), (-0.4, "rejected")):
            spec = SteeringSpec(directions=sets[item.criterion], gamma=sign, layers=[0, 1, 2])
            alone = generate_rows(
                tiny, rows, CFG.decoding, steering=[spec], row_seeds=[item.index]
            )[0]
            assert by_index[item.index][key][0]["content"] == alone.text


def test_gamma_neg_spread_steers_each_rejected_answer_at_its_own_recorded_gamma(tiny):
    """With a spread, every rejected answer is the one steered alone at the γ⁻ its record names;
    the draws differ between instructions, stay within γ⁻ × (1 ± spread) and leave chosen alone."""
    sets = _sets(tiny)
    kept = _kept()[:6]
    cfg = replace(CFG, gamma_neg_spread=0.75, mirror_share=0.0)
    res = generate_pairs(tiny, kept, sets, cfg, progress=False)
    plain = {
        r["icon2_index"]: r
        for r in generate_pairs(
            tiny, kept, sets, replace(cfg, gamma_neg_spread=0.0), progress=False
        ).records
    }
    drawn = {r["icon2_index"]: r["icon2_gamma_neg"] for r in res.records + res.dropped}
    assert len(set(drawn.values())) == len(kept)
    assert all(-0.4 * 1.75 <= g <= -0.4 * 0.25 for g in drawn.values())
    assert drawn == {k.index: cfg.gammas_of(k.index)[1] for k in kept}  # seeded, reproducible
    for r in res.records:
        item = next(k for k in kept if k.index == r["icon2_index"])
        rows = encode_prompts(tiny.tokenizer, [render_chat(tiny.tokenizer, item.instruction)])
        spec = SteeringSpec(
            directions=sets[item.criterion], gamma=drawn[item.index], layers=[0, 1, 2]
        )
        alone = generate_rows(tiny, rows, CFG.decoding, steering=[spec], row_seeds=[item.index])
        assert r["rejected"][0]["content"] == alone[0].text
        if item.index in plain:
            assert r["chosen"] == plain[item.index]["chosen"]
    assert set(plain) & {r["icon2_index"] for r in res.records}  # chosen compared at least once
    with pytest.raises(ValueError, match="gamma_neg_spread"):
        PairConfig(gamma_neg_spread=1.0)
    with pytest.raises(ValueError, match="mean residual norm"):
        PairConfig(gamma_neg=-0.8, gamma_neg_spread=0.5)


@pytest.mark.parametrize("prefix", [0, 3])
def test_mirrored_pairs_choose_the_pushed_answer_over_the_unsteered_one(tiny, prefix):
    """A mirrored instruction's chosen answer is the one steered alone at |γ⁻| and its rejected
    answer the unsteered one; the other instructions keep their one-sided pair."""
    sets = _sets(tiny)
    kept = _kept()
    cfg = replace(
        CFG, gamma_neg=-0.9, gamma_pos=0.0, mirror_share=0.5, seed=4, shared_prefix=prefix
    )
    res = generate_pairs(tiny, kept, sets, cfg, progress=False)
    mirrored = [r["icon2_gamma_neg"] == 0.0 for r in res.records]
    assert any(mirrored) and not all(mirrored)
    for r in res.records:
        item = next(k for k in kept if k.index == r["icon2_index"])
        rows = encode_prompts(tiny.tokenizer, [render_chat(tiny.tokenizer, item.instruction)])
        gp, gn = cfg.gammas_of(item.index)
        assert (r["icon2_gamma_pos"], r["icon2_gamma_neg"]) == (gp, gn)
        assert (gp, gn) in ((0.9, 0.0), (0.0, -0.9))
        spec = SteeringSpec(directions=sets[item.criterion], gamma=gp, layers=[0, 1, 2])
        chosen = generate_rows(tiny, rows, cfg.decoding, steering=[spec], row_seeds=[item.index])
        assert r["chosen"][0]["content"] == chosen[0].text
        if not prefix:
            spec = replace(spec, gamma=gn)
            alone = generate_rows(tiny, rows, cfg.decoding, steering=[spec], row_seeds=[item.index])
            assert r["rejected"][0]["content"] == alone[0].text
    two_sided = replace(cfg, gamma_pos=0.9)  # symmetric pairs are their own mirror
    assert {two_sided.gammas_of(k.index) for k in kept} == {(0.9, -0.9)}
    with pytest.raises(ValueError, match="mirror_share"):
        PairConfig(mirror_share=1.5)


@pytest.mark.parametrize("prefix", [3, 100])
def test_shared_prefix_rejected_continues_the_chosen_opening_at_gamma_neg(tiny, tmp_path, prefix):
    """The chosen answers do not change; each rejected one is the chosen answer's first
    min(P, half the budget, half the chosen answer) tokens continued under γ⁻ alone, within what
    is left of the budget."""
    sets, kept = _sets(tiny), _kept()[:4]
    cfg = replace(CFG, shared_prefix=prefix)
    most = min(prefix, CFG.max_new_tokens // 2)
    res = generate_pairs(tiny, kept, sets, cfg, out=tmp_path / "p3", progress=False)
    plain = generate_pairs(tiny, kept, sets, CFG, progress=False)
    by_index = {r["icon2_index"]: r for r in res.records + res.dropped}
    plain_by_index = {r["icon2_index"]: r for r in plain.records + plain.dropped}
    budget = replace(CFG.decoding, max_new_tokens=CFG.max_new_tokens - most)
    shared = []
    for item in kept:
        rec = by_index[item.index]
        assert rec["chosen"] == plain_by_index[item.index]["chosen"]
        rows = encode_prompts(tiny.tokenizer, [render_chat(tiny.tokenizer, item.instruction)])
        pos = SteeringSpec(directions=sets[item.criterion], gamma=0.4, layers=[0, 1, 2])
        chosen = generate_rows(tiny, rows, CFG.decoding, steering=[pos], row_seeds=[item.index])[0]
        n = min(most, len(chosen.token_ids) // 2)
        assert rec["icon2_shared_prefix"] == n
        shared.append(n)
        neg = SteeringSpec(directions=sets[item.criterion], gamma=-0.4, layers=[0, 1, 2])
        tail = generate_rows(
            tiny,
            [rows[0] + chosen.token_ids[:n]],
            budget,
            steering=[neg],
            row_seeds=[item.index],
            row_draws=[n],
        )[0]
        ids = chosen.token_ids[:n] + tail.token_ids
        assert len(ids) <= CFG.max_new_tokens
        expected = tiny.tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert rec["rejected"][0]["content"] == expected
    assert max(shared) == most  # the prefix is used where the chosen answer is long enough
    # pairs written without a shared prefix are not continued with one
    generate_pairs(tiny, kept[:2], sets, CFG, out=tmp_path / "p0", progress=False)
    with pytest.raises(ValueError, match="different settings"):
        generate_pairs(tiny, kept[:2], sets, cfg, out=tmp_path / "p0", progress=False)
    with pytest.raises(ValueError, match="shared_prefix"):
        replace(CFG, shared_prefix=-1)


def test_resume_after_interruption_gives_every_pair_once(tiny, tmp_path):
    sets = _sets(tiny)
    full = generate_pairs(tiny, _kept(), sets, CFG, out=tmp_path / "full", progress=False)
    part = generate_pairs(
        tiny, _kept(), sets, CFG, out=tmp_path / "resumed", progress=False, limit=1
    )
    assert part.counts["done"] == 3
    # a torn last line, as left by a kill in the middle of a write
    with open(tmp_path / "resumed" / "pairs.jsonl", "a", encoding="utf-8") as f:
        f.write('{"prompt": [{"role": "us')
    again = generate_pairs(tiny, _kept(), sets, CFG, out=tmp_path / "resumed", progress=False)
    on_disk = read_jsonl(tmp_path / "resumed" / "pairs.jsonl") + read_jsonl(
        tmp_path / "resumed" / "dropped.jsonl"
    )
    indices = [r["icon2_index"] for r in on_disk]
    assert sorted(indices) == [k.index for k in _kept()]  # each exactly once
    assert again.records == full.records and again.dropped == full.dropped
    # a third run has nothing left to do and changes nothing
    third = generate_pairs(tiny, _kept(), sets, CFG, out=tmp_path / "resumed", progress=False)
    assert third.records == full.records


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    sets = _sets(tiny)
    generate_pairs(tiny, _kept()[:2], sets, CFG, out=tmp_path, progress=False)
    other = PairConfig(
        gamma_pos=0.2, gamma_neg=-0.4, layers=(0, 1, 2), max_new_tokens=8, do_sample=True, seed=1
    )
    with pytest.raises(ValueError, match="different settings.*pair_config"):
        generate_pairs(tiny, _kept()[:2], sets, other, out=tmp_path, progress=False)


@pytest.mark.parametrize("prefix", [0, 3])
def test_identical_and_degenerate_outputs_are_dropped_and_counted(tiny, prefix):
    """γ = 0 on both sides gives identical answers, also when the rejected one is sampled as the
    continuation of the chosen answer's first tokens (it goes on with the same random stream)."""
    cfg = PairConfig(
        shared_prefix=prefix,
        gamma_pos=0.0,
        gamma_neg=0.0,
        allow_any_gamma=True,  # γ = 0 on both sides: every pair is identical
        layers=(0, 1),
        max_new_tokens=8,
        do_sample=True,
        seed=1,
        max_repetition=0.9,
    )
    res = generate_pairs(tiny, _kept(), _sets(tiny), cfg, progress=False)
    assert res.records == []
    assert sum(res.counts["dropped"].values()) == len(WORDS)
    assert set(res.counts["dropped"]) <= {"identical", "chosen_empty", "chosen_repetition"}
    assert degeneracy("", []) == "empty"
    assert degeneracy("x", [5, 6, 7, 8] * 8) == "repetition"
    assert degeneracy("fine", list(range(40))) is None
    assert repetition_rate(list(range(10))) == 0.0


def test_bad_input(tiny):
    sets = _sets(tiny)
    with pytest.raises(ValueError, match="another model"):
        generate_pairs(tiny, _kept(), _sets(tiny, d=8), CFG, progress=False)
    with pytest.raises(ValueError, match="outside"):
        generate_pairs(tiny, _kept(), sets, PairConfig(layers=(1, 7)), progress=False)
    with pytest.raises(ValueError, match="finite"):
        PairConfig(gamma_pos=float("nan"))
    with pytest.raises(ValueError, match="no direction set"):
        generate_pairs(tiny, [KeptInstruction(0, "hello", "zzz")], sets, CFG, progress=False)
    with pytest.raises(ValueError, match="no instructions"):
        generate_pairs(tiny, [], sets, CFG, progress=False)
