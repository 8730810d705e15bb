"""The experiment runner on a tiny model: every source, DPO per source, AlignEZ, evaluation, report."""

import json
import re

import pytest

from icon2_lens._files import read_jsonl
from icon2_lens.evaluate.judging import DEFAULT_JUDGES
from icon2_lens.runs.experiment import run_experiment
from icon2_lens.testing import save_tiny_model

SOURCES = ["icon2", "sp", "sampling_ranking", "self_rewarding", "icon2_unfiltered"]


def test_experiment_end_to_end(
    tiny_experiment_model, tiny_experiment_config, tmp_path, lenient_cleaning
):
    cfg = tiny_experiment_config(tiny_experiment_model)
    out = tmp_path / "xp"
    result = run_experiment(cfg, out, progress=False, png=False)
    n_train = json.loads((out / "experiment.json").read_text())["n_train_pairs"]
    assert 1 <= n_train <= 2
    for source in SOURCES:
        records = read_jsonl(out / "pairs" / source / "pairs.jsonl")
        assert records and all(r["icon2_source"] == source for r in records)
        log = json.loads((out / "dpo" / source / "dpo_log.json").read_text())
        assert log["n_records"] == n_train  # the same number of pairs for every source
    # the unfiltered source draws from the whole pool, the others from the kept instructions
    kept = {k["index"] for k in read_jsonl(out / "filter" / "kept.jsonl")}
    for source in ("icon2", "sp", "sampling_ranking", "self_rewarding"):
        assert {
            r["icon2_index"] for r in read_jsonl(out / "pairs" / source / "pairs.jsonl")
        } <= kept
    assert set(result["comparisons"]) == set(SOURCES) | {"alignez"}
    for by_judge in result["comparisons"].values():
        assert set(by_judge) == set(DEFAULT_JUDGES)
        for c in by_judge.values():
            w = c["win_rate"]
            assert 0 <= w["low"] <= w["value"] <= w["high"] <= 1
        assert by_judge["refusal"]["n"] == 2 and by_judge["fluency"]["n"] <= 6
    costs = json.loads((out / "costs.json").read_text())
    for stage in (
        "icon2/extract",
        "icon2/filter",
        "icon2/pairs",
        "sampling_ranking/judge",
        "self_rewarding/judge",
        "common/synthesize",
        "alignez/fit",
    ):
        assert costs[stage]["seconds"] > 0 and costs[stage]["forward_tokens"] > 0, stage
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "Table 4" in report and "pending" not in report
    targets = re.findall(r"\]\(([^)]+)\)", report)
    assert all((out / t).is_file() for t in targets)
    # finished: a second call redoes nothing and gives the same result
    again = run_experiment(cfg, out, progress=False, png=False)
    assert again == json.loads((out / "eval" / "eval.json").read_text())
    assert (
        json.loads((out / "costs.json").read_text())["icon2/pairs"]["forward_tokens"]
        == costs["icon2/pairs"]["forward_tokens"]
    )


def test_experiment_judges_a_second_heldout_set(
    tiny_experiment_model, tiny_experiment_config, tmp_path, lenient_cleaning
):
    """``eval.n_synthetic``: synthesized instructions no source was given, Icon² as the reference."""
    small = {"sources": ["icon2", "sp"], "n_instructions": 2, "n_pairs": 1, "alignez": False}
    judges = ["relevance", "length", "refusal"]
    cfg = tiny_experiment_config(
        tiny_experiment_model,
        experiment=small,
        eval={"judges": judges, "n_synthetic": 2, "n_benign": 2, "n_harmful": 1},
    )
    out = tmp_path / "xp"
    run_experiment(cfg, out, progress=False, png=False)
    syn = json.loads((out / "eval" / "synthetic" / "eval.json").read_text())
    assert syn["n"] == 2 and syn["n_harmful"] == 0 and syn["reference"] == "icon2"
    assert set(syn["comparisons"]) == {"base", "sp"}
    assert all(set(b) == {"relevance", "length"} for b in syn["comparisons"].values())
    held = read_jsonl(out / "eval" / "synthetic" / "instructions.jsonl")
    given = {k["index"] for k in read_jsonl(out / "filter" / "kept.jsonl")[:2]}
    for source in small["sources"]:
        given |= {r["icon2_index"] for r in read_jsonl(out / "pairs" / source / "pairs.jsonl")}
    assert len(held) == 2 and not {h["index"] for h in held} & given
    assert json.loads((out / "costs.json").read_text())["eval/synthetic"]["seconds"] > 0
    assert "Second held-out set" in (out / "report.md").read_text()
    # nothing left to hold out (every instruction goes to a source): refused before any pair
    greedy = tiny_experiment_config(
        tiny_experiment_model, experiment={**small, "n_instructions": 999}, eval={"n_synthetic": 2}
    )
    with pytest.raises(RuntimeError, match="raise synthesize.n or set eval.n_synthetic = 0"):
        run_experiment(greedy, tmp_path / "none", progress=False, png=False)
    assert not (tmp_path / "none" / "pairs").exists()


def test_synthetic_heldout_leaves_out_what_any_source_saw(caplog):
    from icon2_lens.consistency.filter import KeptInstruction
    from icon2_lens.evaluate.judging import builtin_eval_records
    from icon2_lens.pairs.baselines import sample_unfiltered
    from icon2_lens.runs.config import ExperimentConfig
    from icon2_lens.runs.experiment import synthetic_heldout

    shipped = builtin_eval_records()[0]["instruction"]
    texts = [f"request {i}" for i in range(40)] + ["request 0", "request 7", shipped]
    pool = [KeptInstruction(i, t, "general", float(-i)) for i, t in enumerate(texts)]
    kept = pool[5:25]  # what the filter kept, best first
    cfg = ExperimentConfig.from_dict(
        {
            "experiment": {
                "sources": ["icon2", "icon2_unfiltered"],
                "n_instructions": 6,
                "alignez": False,
            },
            "eval": {"n_synthetic": 12, "seed": 3},
        }
    )
    held = synthetic_heldout(cfg, kept, pool)
    assert held == synthetic_heldout(cfg, kept, pool)  # same seed, same set
    given = {k.index for k in kept[:6]} | {k.index for k in sample_unfiltered(pool, 6, cfg.seed)}
    given_texts = {texts[i] for i in given}
    assert len(held) == 12 and [h["index"] for h in held] == sorted(h["index"] for h in held)
    assert all(h["index"] not in given and h["instruction"] not in given_texts for h in held)
    assert shipped not in {h["instruction"] for h in held}
    assert len({h["instruction"] for h in held}) == 12 and {h["kind"] for h in held} == {"benign"}
    # another seed draws another sample; asking for more than there are gives all, with a warning
    other = ExperimentConfig.from_dict(
        {**cfg.to_dict(), "eval": {**cfg.to_dict()["eval"], "seed": 4}}
    )
    assert synthetic_heldout(other, kept, pool) != held
    many = ExperimentConfig.from_dict(
        {**cfg.to_dict(), "eval": {**cfg.to_dict()["eval"], "n_synthetic": 99}}
    )
    everything = synthetic_heldout(many, kept, pool)
    assert "fewer than eval.n_synthetic=99" in caplog.text
    assert {h["instruction"] for h in everything} == set(texts) - given_texts - {shipped}
    assert {h["index"] for h in held} <= {h["index"] for h in everything}
    # AlignEZ, when it runs, is fitted on the first alignez.n_queries kept: those are out too
    fitted = ExperimentConfig.from_dict(
        {
            **many.to_dict(),
            "experiment": {**many.to_dict()["experiment"], "alignez": True},
            "alignez": {"n_queries": 10},
        }
    )
    with_alignez = {h["instruction"] for h in synthetic_heldout(fitted, kept, pool)}
    assert with_alignez == {h["instruction"] for h in everything} - {
        k.instruction for k in kept[:10]
    }


def test_bad_configs(tiny_experiment_model, tiny_experiment_config, tmp_path, lenient_cleaning):
    model_dir, _cfg = tiny_experiment_model, tiny_experiment_config
    with pytest.raises(ValueError, match="unknown pair source"):
        _cfg(model_dir, experiment={"sources": ["icon2", "rlhf"]})
    with pytest.raises(ValueError, match="unknown judge"):
        _cfg(model_dir, eval={"judges": ["gpt4"]})
    with pytest.raises(ValueError, match="n_pairs must be at least 1"):
        _cfg(model_dir, experiment={"n_pairs": 0})
    with pytest.raises(ValueError, match="unknown config key"):
        _cfg(model_dir, experiment={"n_pair": 3})
    # a run directory belongs to one model and configuration
    cfg = _cfg(model_dir, experiment={"sources": ["sp"], "alignez": False})
    from icon2_lens.runs.config import check_run_dir

    check_run_dir(tmp_path / "xp", cfg)
    other = save_tiny_model(tmp_path / "other", judge_labels=True, d_model=32)
    with pytest.raises(ValueError, match="another configuration"):
        run_experiment(
            _cfg(other, experiment={"sources": ["sp"], "alignez": False}),
            tmp_path / "xp",
            progress=False,
            png=False,
        )
    with pytest.raises(ValueError, match="eval.reference = 'sp' is not a system"):
        _cfg(model_dir, experiment={"sources": ["icon2"]}, eval={"reference": "sp"})
    with pytest.raises(ValueError, match="eval.synthetic_reference = 'icon2' is not a system"):
        _cfg(model_dir, experiment={"sources": ["sp"]}, eval={"n_synthetic": 8})
    _cfg(model_dir, experiment={"sources": ["sp"]}, eval={"n_synthetic": 0})  # not used: fine
    with pytest.raises(ValueError, match="no judge for the synthetic set"):
        _cfg(model_dir, eval={"n_synthetic": 8, "judges": ["refusal"]})
    with pytest.raises(ValueError, match="n_synthetic must be >= 0"):
        _cfg(model_dir, eval={"n_synthetic": -1})
    with pytest.raises(ValueError, match="unknown config key.*alignez.k_dims"):
        _cfg(model_dir, alignez={"k_dims": 3})


def test_a_source_without_pairs_is_a_clear_error(
    tiny_experiment_config, tmp_path, lenient_cleaning
):
    # the plain tiny model ignores its system prompt: both sp answers are identical, all dropped
    flat = save_tiny_model(tmp_path / "flat", judge_labels=True)
    cfg = tiny_experiment_config(flat, experiment={"sources": ["sp"], "alignez": False})
    with pytest.raises(RuntimeError, match=r"no pairs from \['sp'\]"):
        run_experiment(cfg, tmp_path / "xp", progress=False, png=False)
