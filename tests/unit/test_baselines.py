import json
import math
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from icon2_lens._files import read_jsonl
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.directions.criteria import get_criteria
from icon2_lens.directions.set import DirectionSet
from icon2_lens.judge.rules import degeneracy
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.generate import generate, generate_rows
from icon2_lens.pairs.baselines import (
    SOURCES,
    make_icon2_unfiltered_pairs,
    make_pairs,
    make_sp_pairs,
    sample_unfiltered,
)
from icon2_lens.pairs.common import BaselineConfig, sample_seed
from icon2_lens.pairs.icon2 import PairConfig, generate_pairs
from icon2_lens.pairs.ranking import make_sampling_ranking_pairs, make_self_rewarding_pairs
from icon2_lens.pairs.records import validate_pairs
from icon2_lens.testing import TINY_REQUESTS, tiny_causal_lm, tiny_tokenizer

WORDS = list(TINY_REQUESTS[:8])
CRITERIA = ("helpfulness", "honesty")
CFG = BaselineConfig(
    n_samples=4,
    temperature=1.0,
    top_p=1.0,
    max_new_tokens=8,
    seed=3,
    batch_size=3,
    max_repetition=0.9,
    sp_do_sample=True,
)
SAMPLING = CFG.sample_decoding


class HashJudge:
    """Scores a response by a hash of its text (distinct texts, distinct scores); NaN if it says 'the'."""

    kind = "pointwise"
    description = "a hash of the text; unscorable when it contains 'the'"

    def __init__(self, name="hash"):
        self.name = name
        self.seen = []

    def score(self, instructions, responses):
        assert len(instructions) == len(responses)
        self.seen.extend(responses)
        return np.array(
            [math.nan if "the" in r.split() else zlib.crc32(r.encode()) % 1000 for r in responses],
            dtype=float,
        )


class LengthJudge:
    name, description, kind = "length", "words in the response", "pointwise"

    def score(self, instructions, responses):
        return np.array([len(r.split()) for r in responses], dtype=float)


def _kept(n=None):
    return [KeptInstruction(10 + i, w, CRITERIA[i % 2], float(i)) for i, w in enumerate(WORDS[:n])]


def _sets(model, names=CRITERIA):
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in names:
        v = torch.nn.functional.normalize(
            torch.randn(model.cfg.n_layers, model.cfg.d_model, generator=g), dim=-1
        )
        stats = tuple({"mean_resid_norm": 50.0} for _ in range(model.cfg.n_layers))
        out[name] = DirectionSet(
            criterion=name,
            layers=tuple(range(model.cfg.n_layers)),
            vectors=v,
            method="mean_diff",
            stats=stats,
        )
    return out


PAIR_CFG = PairConfig(
    gamma_pos=0.4,
    gamma_neg=-0.4,
    layers=(0, 1, 2),
    batch_size=3,
    max_repetition=0.9,
    max_new_tokens=8,
    do_sample=True,
    seed=1,
)

COMMON = (
    "icon2_index",
    "icon2_criterion",
    "icon2_source",
    "icon2_consistency",
    "icon2_model",
    "icon2_model_fingerprint",
    "icon2_seed",
    "icon2_max_new_tokens",
    "icon2_do_sample",
)


def _check_format(res, source):
    validate_pairs(res.records)
    for r in res.records + res.dropped:
        assert r["prompt"] == [{"role": "user", "content": WORDS[r["icon2_index"] - 10]}]
        assert r["icon2_source"] == source
        assert all(k in r for k in COMMON), [k for k in COMMON if k not in r]
        json.loads(json.dumps(r, allow_nan=False))  # strict JSON: no NaN anywhere


def test_sampling_ranking_picks_the_judges_best_and_worst_usable_sample(tiny):
    judge = HashJudge()
    kept = _kept(4)
    res = make_sampling_ranking_pairs(tiny, kept, judge, CFG, progress=False)
    assert res.counts["done"] == len(kept) == len(res.records) + len(res.dropped)
    assert res.records, res.counts
    _check_format(res, "sampling_ranking")
    by_index = {r["icon2_index"]: r for r in res.records + res.dropped}
    oracle = HashJudge()
    tokens = judged = 0
    for item in kept:
        # the oracle: regenerate this instruction's samples alone, from their row seeds
        row = encode_prompts(tiny.tokenizer, [render_chat(tiny.tokenizer, item.instruction)])[0]
        gens = generate_rows(
            tiny, [row] * 4, SAMPLING, row_seeds=[sample_seed(item.index, k) for k in range(4)]
        )
        usable_text = [
            g.text for g in gens if degeneracy(g.text, g.token_ids, max_repetition=0.9) is None
        ]
        scores = {
            t: s for t, s in zip(usable_text, oracle.score([""] * len(usable_text), usable_text))
        }
        ranked = [t for t in usable_text if math.isfinite(scores[t])]
        rec = by_index[item.index]
        assert rec["icon2_judge"] == "hash" and rec["icon2_n_samples"] == 4
        assert rec["icon2_usable_samples"] == len(ranked)
        tokens += sum(len(g.token_ids) + g.finished for g in gens)
        judged += len(usable_text)
        if len(ranked) < 2:
            assert rec["icon2_drop_reason"] == "too_few_usable"
            continue
        best, worst = max(scores[t] for t in ranked), min(scores[t] for t in ranked)
        if best == worst:
            assert rec["icon2_drop_reason"] in ("tied", "identical")
            continue
        assert rec["icon2_chosen_score"] == best and rec["icon2_rejected_score"] == worst
        assert rec["icon2_score_spread"] == best - worst > 0
        assert scores[rec["chosen"][0]["content"]] == best
        assert scores[rec["rejected"][0]["content"]] == worst
        recorded = [s for s in rec["icon2_sample_scores"] if s is not None]
        assert sorted(recorded) == sorted(scores[t] for t in ranked)
        assert "icon2_drop_reason" not in rec
    assert res.counts["samples"] == 4 * len(kept)
    assert res.counts["generated_tokens"] == tokens and res.counts["generated_tokens_exact"]
    assert (
        res.counts["judged"] == judged == len(judge.seen)
    )  # degenerate samples never reach the judge


def test_ties_and_too_few_usable_samples_are_dropped(tiny):
    class Constant(LengthJudge):
        name = "constant"

        def score(self, instructions, responses):
            return np.ones(len(responses))

    class Unscorable(LengthJudge):
        name = "unscorable"

        def score(self, instructions, responses):
            return np.full(len(responses), np.nan)

    tied = make_sampling_ranking_pairs(tiny, _kept(3), Constant(), CFG, progress=False)
    assert tied.records == [] and set(tied.counts["dropped"]) <= {"tied", "too_few_usable"}
    none = make_sampling_ranking_pairs(tiny, _kept(3), Unscorable(), CFG, progress=False)
    assert none.counts["dropped"] == {"too_few_usable": 3}
    assert all(len(d["icon2_samples"]) == 4 for d in none.dropped)
    assert none.counts["unscorable_sample_rate"] > 0


def test_same_seed_same_records_other_seed_other_samples(tiny):
    a = make_sampling_ranking_pairs(tiny, _kept(3), HashJudge(), CFG, progress=False)
    b = make_sampling_ranking_pairs(tiny, _kept(3), HashJudge(), CFG, progress=False)
    assert a.records == b.records and a.dropped == b.dropped
    other = replace(CFG, seed=4)
    c = make_sampling_ranking_pairs(tiny, _kept(3), HashJudge(), other, progress=False)
    assert [r["chosen"] for r in a.records + a.dropped] != [
        r["chosen"] for r in c.records + c.dropped
    ]


def test_resume_after_one_batch_equals_an_uninterrupted_run(tiny, tmp_path):
    kept = _kept(6)
    full = make_sampling_ranking_pairs(
        tiny, kept, HashJudge(), CFG, out=tmp_path / "full", progress=False
    )
    part = make_sampling_ranking_pairs(
        tiny, kept, HashJudge(), CFG, out=tmp_path / "resumed", progress=False, limit=1
    )
    assert part.counts["done"] == 3
    again = make_sampling_ranking_pairs(
        tiny, kept, HashJudge(), CFG, out=tmp_path / "resumed", progress=False
    )
    on_disk = read_jsonl(tmp_path / "resumed" / "pairs.jsonl") + read_jsonl(
        tmp_path / "resumed" / "dropped.jsonl"
    )
    assert sorted(r["icon2_index"] for r in on_disk) == [k.index for k in kept]
    assert again.records == full.records and again.dropped == full.dropped
    assert again.counts == full.counts
    settings = json.loads((tmp_path / "full" / "settings.json").read_text())
    assert settings["source"] == "sampling_ranking" and settings["judge"]["name"] == "hash"
    assert "batch_size" not in settings["baseline_config"]


def test_resume_with_other_settings_source_or_list_is_refused(tiny, tmp_path):
    make_self_rewarding_pairs(tiny, _kept(2), HashJudge("self"), CFG, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different settings.*judge"):
        make_self_rewarding_pairs(
            tiny, _kept(2), HashJudge("other"), CFG, out=tmp_path, progress=False
        )
    more = replace(CFG, n_samples=5)
    with pytest.raises(ValueError, match="different settings.*baseline_config"):
        make_self_rewarding_pairs(
            tiny, _kept(2), HashJudge("self"), more, out=tmp_path, progress=False
        )
    with pytest.raises(ValueError, match="different settings.*source"):
        make_sampling_ranking_pairs(
            tiny, _kept(2), HashJudge("self"), CFG, out=tmp_path, progress=False
        )
    with pytest.raises(ValueError, match="not in this run's list"):
        make_self_rewarding_pairs(
            tiny, _kept(1), HashJudge("self"), CFG, out=tmp_path, progress=False
        )
    # a batch size or backend change is not a settings change
    bigger = replace(CFG, batch_size=5, backend="bridge")
    res = make_self_rewarding_pairs(
        tiny, _kept(2), HashJudge("self"), bigger, out=tmp_path, progress=False
    )
    assert res.counts["done"] == 2 and all(
        r["icon2_source"] == "self_rewarding" for r in res.records
    )


def _attentive_model():
    """The tiny Llama with its attention scaled up: the plain one's output barely depends on the
    context (the scaled-up embeddings swamp what attention adds), so both system prompts would
    give the same answer; scaled, greedy answers differ and are not empty."""
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny_tokenizer()
    hf = tiny_causal_lm(tok)
    with torch.no_grad():
        for layer in hf.model.layers:
            for proj, scale in (("q_proj", 5), ("k_proj", 5), ("v_proj", 20), ("o_proj", 20)):
                getattr(layer.self_attn, proj).weight.mul_(scale)
    return TransformerBridge.boot_transformers(
        "icon2-tiny-llama", hf_model=hf, tokenizer=tok, device="cpu"
    ).eval()


def test_sp_pairs_are_the_answers_under_the_two_system_prompts(tmp_path):
    model = _attentive_model()
    criteria = get_criteria(CRITERIA)
    config = BaselineConfig(max_new_tokens=8, batch_size=3, max_repetition=0.9)  # greedy
    res = make_sp_pairs(model, _kept(), criteria, config, out=tmp_path, progress=False)
    assert len(res.records) >= len(WORDS) // 2, res.counts
    _check_format(res, "sp")
    tok = model.tokenizer
    by_name = {c.name: c for c in criteria}
    done = sorted(res.records + res.dropped, key=lambda r: r["icon2_index"])
    for side, polarity in (("chosen", "positive"), ("rejected", "negative")):
        prompts = [
            render_chat(tok, k.instruction, system=getattr(by_name[k.criterion], polarity))
            for k in _kept()
        ]
        expected = [
            g.text
            for g in generate(model, prompts, config.greedy_decoding, batch_size=len(prompts))
        ]
        assert [r[side][0]["content"] for r in done] == expected
    for r in res.records:
        assert r["chosen"] != r["rejected"]
    assert res.counts["samples"] == 2 * len(WORDS)
    assert json.loads((tmp_path / "settings.json").read_text())["criteria"]["honesty"]["negative"]
    with pytest.raises(ValueError, match="no system prompts.*honesty"):
        make_sp_pairs(model, _kept(), criteria[:1], config, progress=False)


def test_icon2_unfiltered_sample_is_seeded_and_run_through_icon2(tiny, tmp_path):
    pool = [KeptInstruction(10 + i, WORDS[i % len(WORDS)], CRITERIA[i % 2]) for i in range(40)]
    a, b = sample_unfiltered(pool, 5, seed=0), sample_unfiltered(pool, 5, seed=0)
    assert a == b and len({k.index for k in a}) == 5
    assert [k.index for k in a] == sorted(k.index for k in a)  # pool order
    assert a != sample_unfiltered(pool, 5, seed=1)
    assert (
        sample_unfiltered(pool[::-1], 5, seed=0) == a[::-1]
    )  # depends on the indices, not the order
    assert set(map(id, a)) <= set(map(id, pool))
    with pytest.raises(ValueError, match="cannot sample"):
        sample_unfiltered(pool, 41, seed=0)

    small = pool[:8]
    res = make_icon2_unfiltered_pairs(
        tiny, small, 4, _sets(tiny), PAIR_CFG, seed=0, out=tmp_path, progress=False
    )
    assert sorted(r["icon2_index"] for r in res.records + res.dropped) == [
        k.index for k in sample_unfiltered(small, 4, 0)
    ]
    assert all(r["icon2_source"] == "icon2_unfiltered" for r in res.records + res.dropped)
    assert res.counts["samples"] == 8 and not res.counts["generated_tokens_exact"]
    assert json.loads((tmp_path / "settings.json").read_text())["source"] == "icon2_unfiltered"
    with pytest.raises(ValueError, match="another random sample"):
        make_icon2_unfiltered_pairs(
            tiny, small, 4, _sets(tiny), PAIR_CFG, seed=1, out=tmp_path, progress=False
        )
    with pytest.raises(ValueError, match="different settings"):
        generate_pairs(
            tiny, small, _sets(tiny), PAIR_CFG, out=tmp_path, progress=False
        )  # source icon2


def test_icon2_records_carry_their_source_and_old_directories_still_resume(tiny, tmp_path):
    kept = _kept(6)
    full = generate_pairs(tiny, kept, _sets(tiny), PAIR_CFG, progress=False)
    assert all(r["icon2_source"] == "icon2" for r in full.records + full.dropped)
    generate_pairs(tiny, kept, _sets(tiny), PAIR_CFG, out=tmp_path, progress=False, limit=1)
    # make the directory look like one written before icon2_source existed
    settings = json.loads((tmp_path / "settings.json").read_text())
    del settings["source"]
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    for name in ("pairs.jsonl", "dropped.jsonl"):
        rows = [
            {k: v for k, v in r.items() if k != "icon2_source"} for r in read_jsonl(tmp_path / name)
        ]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="different settings.*source"):
        generate_pairs(
            tiny,
            kept,
            _sets(tiny),
            PAIR_CFG,
            out=tmp_path,
            progress=False,
            source="icon2_unfiltered",
        )
    again = generate_pairs(tiny, kept, _sets(tiny), PAIR_CFG, out=tmp_path, progress=False)
    assert again.records == full.records and again.dropped == full.dropped


def test_make_pairs_dispatches_and_names_missing_inputs(tiny):
    kept = _kept(3)
    with pytest.raises(ValueError, match="unknown pair source 'x'; use one of icon2, sp"):
        make_pairs("x", tiny, kept)
    for source, missing in (
        ("icon2", "direction_sets"),
        ("icon2_unfiltered", "direction_sets"),
        ("sp", "criteria"),
        ("sampling_ranking", "judge"),
        ("self_rewarding", "judge"),
    ):
        with pytest.raises(ValueError, match=f"'{source}' needs .*{missing}"):
            make_pairs(source, tiny, kept)
    with pytest.raises(ValueError, match="needs n"):
        make_pairs("icon2_unfiltered", tiny, kept, direction_sets=_sets(tiny))
    inputs = dict(
        direction_sets=_sets(tiny),
        criteria=get_criteria(CRITERIA),
        judge=LengthJudge(),
        pair_config=PAIR_CFG,
        config=CFG,
        n=2,
        progress=False,
    )
    for source in SOURCES:
        res = make_pairs(source, tiny, kept, **inputs)
        assert all(r["icon2_source"] == source for r in res.records + res.dropped)
        assert (
            res.counts["samples"] >= 2 * res.counts["done"] and res.counts["generated_tokens"] >= 0
        )


def test_bad_judges_and_configs(tiny):
    class Pairwise(LengthJudge):
        kind = "pairwise"

    class Short(LengthJudge):
        def score(self, instructions, responses):
            return np.zeros(len(responses) + 1)

    class Nameless(LengthJudge):
        name = ""

    with pytest.raises(ValueError, match="pointwise"):
        make_sampling_ranking_pairs(tiny, _kept(2), Pairwise(), CFG, progress=False)
    with pytest.raises(ValueError, match="non-empty name"):
        make_self_rewarding_pairs(tiny, _kept(2), Nameless(), CFG, progress=False)
    with pytest.raises(ValueError, match="one float per response"):
        make_sampling_ranking_pairs(tiny, _kept(2), Short(), CFG, progress=False)
    with pytest.raises(ValueError, match="n_samples"):
        BaselineConfig(n_samples=1)
    assert (
        BaselineConfig().sample_decoding.do_sample
        and not BaselineConfig().greedy_decoding.do_sample
    )
    with pytest.raises(ValueError, match="batch_size"):
        BaselineConfig(batch_size=0)
    assert set(BaselineConfig().settings()) == {
        "n_samples",
        "sample_decoding",
        "greedy_decoding",
        "max_repetition",
    }
    defaults = BaselineConfig().sample_decoding
    assert (defaults.temperature, defaults.top_p, defaults.max_new_tokens, defaults.do_sample) == (
        0.8,
        0.95,
        128,
        True,
    )
