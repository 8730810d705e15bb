"""scripts/heldout_instructions.py: a run's clean instructions that no pair was made from."""

import json
import subprocess
import sys
from pathlib import Path

from icon2_lens.evaluate.judging import builtin_eval_records

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "heldout_instructions.py"


def _write(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def _fake_run(root: Path) -> tuple[list[str], list[str], str]:
    """A run folder whose pool holds 30 fresh texts, 5 kept ones, a built-in request and repeats."""
    fresh = [f"Write a note about topic {i}." for i in range(30)]
    kept = [f"Explain idea {i}." for i in range(5)]
    builtin = builtin_eval_records()[0]["instruction"]
    pool = kept[:2] + fresh[:10] + [builtin] + fresh[:3] + kept[2:] + fresh[10:]
    _write(root / "filter" / "scores.jsonl", pool)
    _write(root / "filter" / "kept.jsonl", kept)
    return fresh, kept, builtin


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_draws_only_unkept_unique_non_builtin_texts(tmp_path):
    fresh, kept, builtin = _fake_run(tmp_path / "run")
    out = tmp_path / "heldout.jsonl"
    done = _run(str(tmp_path / "run"), "--n", "12", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = _read(out)
    texts = [r["instruction"] for r in rows]
    assert len(rows) == 12 and len(set(texts)) == 12
    assert set(texts) <= set(fresh)  # never a kept, built-in or repeated text
    assert all(r["kind"] == "benign" for r in rows)
    indices = [r["index"] for r in rows]
    assert indices == sorted(indices)  # pool order
    pool = [json.loads(x)["instruction"] for x in (tmp_path / "run/filter/scores.jsonl").open()]
    assert all(pool[r["index"]] == r["instruction"] for r in rows)


def test_same_seed_same_draw_and_n_caps_at_the_eligible(tmp_path):
    fresh, _, _ = _fake_run(tmp_path / "run")
    a, b, c, every = (tmp_path / f"{x}.jsonl" for x in "abce")
    for path, seed in ((a, "0"), (b, "0"), (c, "1")):
        _run(str(tmp_path / "run"), "--n", "8", "--seed", seed, "--out", str(path))
    assert a.read_text() == b.read_text()
    assert a.read_text() != c.read_text()
    done = _run(str(tmp_path / "run"), "--n", "1000", "--out", str(every))
    assert done.returncode == 0
    assert sorted(r["instruction"] for r in _read(every)) == sorted(fresh)


def test_a_folder_without_a_filter_stage_is_a_one_line_error(tmp_path):
    done = _run(str(tmp_path / "missing"), "--out", str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "filter stage" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.jsonl").exists()
