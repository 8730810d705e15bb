"""End to end on a tiny model saved as an HF directory: every stage, resume, report."""

import json
import re

import pandas as pd
import pytest

from icon2_lens._files import read_jsonl
from icon2_lens.runs.config import load_config
from icon2_lens.runs.pipeline import run_pipeline
from icon2_lens.testing import save_tiny_model


def _cfg(model_dir, **over):
    return load_config(
        model=str(model_dir),
        extract={"criteria": ["helpfulness", "honesty"], "n_instructions": 12, "n_heldout": 6},
        synthesize={"n": 48, "max_new_tokens": 10, "batch_size": 16},
        filter={"fraction": 1.0},
        pairs={
            "layers": "0-2",
            "gamma_pos": 2.0,  # a random tiny model needs strong pushes
            "allow_any_gamma": True,
            "gamma_neg": -2.0,
            "max_new_tokens": 8,
            "do_sample": True,
        },
        dpo={"per_device_train_batch_size": 2, "max_length": 64, "learning_rate": 1e-3},
        evaluate={"n_heldout": 4, "max_new_tokens": 6},
        # the stereotype section reads the pinned data wheel; its own tests cover it offline
        audit={
            "sections": ["lens", "wording", "confounds", "shortcuts", "shift"],
            "n_wording": 4,
            "n_prompts": 2,
            "n_shift": 4,
            "n_boot": 20,
        },
        **over,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_runs_end_to_end_and_resumes(model_dir, tmp_path, monkeypatch):
    import icon2_lens.instructions.synthesize as synthesize

    # the tiny model writes random words; let every sample through the request heuristics
    real = synthesize.clean_instructions
    monkeypatch.setattr(
        synthesize,
        "clean_instructions",
        lambda texts, **k: real(texts, **{**k, "min_words": 1, "min_chars": 1}),
    )
    cfg = _cfg(model_dir)
    out = tmp_path / "run"
    run_pipeline(cfg, out, progress=False, png=False, stop_after="filter")
    assert (out / "filter" / "filter.json").is_file() and not (out / "pairs").exists()
    report = (out / "report.md").read_text()
    assert "pending" in report
    run_pipeline(cfg, out, progress=False, png=False)
    pairs = read_jsonl(out / "pairs" / "pairs.jsonl")
    kept = read_jsonl(out / "filter" / "kept.jsonl")
    dropped = read_jsonl(out / "pairs" / "dropped.jsonl")
    assert sorted(r["icon2_index"] for r in pairs + dropped) == sorted(k["index"] for k in kept)
    assert (out / "dpo" / "model" / "config.json").is_file()
    ev = json.loads((out / "evaluate" / "evaluate.json").read_text())
    assert ev["n"] == 4
    gap = ev["trained_vs_base"]["mean_gap"]
    assert gap["low"] <= gap["value"] <= gap["high"] and gap["n"] == 4
    assert sum(x["n"] for x in ev["per_criterion"].values()) == 4
    assert set(ev["gap_by_direction"]) == {"helpfulness", "honesty"}
    # the judges that read no direction, trained against base, each with its interval
    assert set(ev["independent"]) == set(cfg.evaluate.judges)
    # the tiny vocabulary has no A/B: the pairwise self-judge is skipped with the reason
    assert "labels" in ev["independent"]["self_pairwise"]["skipped"]
    for c in ev["independent"].values():
        assert "skipped" in c or (
            c["n"] + c["n_dropped"] == 4 and c["win_rate"]["low"] <= c["win_rate"]["high"]
        )
    report = (out / "report.md").read_text()
    assert "pending" not in report and "Held-out evaluation" in report
    assert "interval_paired_acc" in report.split("## 2.")[0]  # the directions table renders
    targets = re.findall(r"\]\(([^)]+)\)", report)
    assert targets and all(
        (out / t).is_file() for t in targets
    )  # figures addressed from the report's folder
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"extract", "synthesize", "filter", "pairs", "dpo", "evaluate", "audit"}
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert set(audit["sections"]) == {
        "lens",
        "wording",
        "confounds",
        "shift",
    }  # too few pairs to check
    assert "skipped" in json.loads((out / "pairs" / "shortcuts.json").read_text())
    assert "(audit/report.md)" in report and "## 7. Audit" in report
    assert "judges that read no direction" in report


def test_config_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(pairs={"gama_pos": 0.1})
    bad = tmp_path / "bad.toml"
    bad.write_text("model = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    out = tmp_path / "run"
    run_pipeline(_cfg(model_dir), out, progress=False, png=False, stop_after="extract")
    with pytest.raises(ValueError, match="another configuration"):
        run_pipeline(_cfg(model_dir, seed=1), out, progress=False, png=False, stop_after="extract")


def test_cli_sweep_on_a_model_directory(model_dir, tmp_path, capsys):
    from icon2_lens.cli import main
    from icon2_lens.model.load import load_model
    from icon2_lens.runs.stages import stage_extract

    stage_extract(
        load_model(str(model_dir)), _cfg(model_dir).extract, tmp_path / "ex", progress=False
    )
    code = main(
        [
            "sweep",
            "--model",
            str(model_dir),
            "--directions",
            str(tmp_path / "ex"),
            "--n",
            "3",
            "--gammas=-2,2",
            "--intervals",
            "0-1;1-2",
            "--max-new-tokens",
            "4",
            "--no-png",
            "--no-progress",
            "--out",
            str(tmp_path / "sw"),
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert {r["interval"] for r in data["by_gamma"]} == {"0-1", "1-2"}
    assert {r["gamma"] for r in data["by_gamma"]} == {-2.0, 0.0, 2.0}
    assert (tmp_path / "sw" / "sweep.html").is_file()
    # the rule re-applied to the saved responses, without generating anything
    assert (
        main(["sweep", "--out", str(tmp_path / "sw"), "--rechoose", "--min-win", "1.5", "--no-png"])
        == 0
    )
    again = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert again["rule"]["min_win"] == 1.5 and "reason" in again["choice"]
    pd.testing.assert_frame_equal(
        pd.DataFrame(again["by_gamma"]), pd.DataFrame(data["by_gamma"]), check_exact=False
    )
    assert (
        main(
            [
                "sweep",
                "--model",
                str(model_dir),
                "--directions",
                str(tmp_path / "ex"),
                "--intervals",
                "0-9",
                "--out",
                str(tmp_path / "sw2"),
            ]
        )
        == 2
    )
