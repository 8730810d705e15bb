"""The surface gate leaves out exactly the pairs that carry a planted cue, and no others."""

import json
from types import SimpleNamespace

import pytest

from icon2_lens.audit.shortcuts import shortcut_report
from icon2_lens.pairs.gate import (
    GATE_FILE,
    TRAIN_FILE,
    apply_surface_gate,
    gate_surface_cues,
    training_pairs,
    training_pairs_path,
)

TOPICS = ["soup", "bread", "tea", "rice", "eggs", "beans", "pasta", "salad"]


def _pairs(n=40, n_apology=24):
    """Chosen and rejected alike in length and register, except that the first ``n_apology``
    rejected answers open with an apology."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        body = f"cook the {topic} slowly with salt, step {i}, and serve it"
        opener = "I'm sorry," if i < n_apology else "Well then,"  # as many words either way
        out.append(
            {
                "prompt": f"how do I make {topic} {i}?",
                "chosen": f"Well then, {body} warm",
                "rejected": f"{opener} {body} hot",
                "icon2_index": 100 + i,
            }
        )
    return out


def test_the_gate_leaves_out_planted_cue_pairs_only_until_the_cue_is_gone():
    recs = _pairs()
    res = gate_surface_cues(recs, threshold=0.7)
    assert res.before["strength"] >= 0.7
    assert res.complete and res.after["strength"] < 0.7
    assert all(d["icon2_index"] < 100 + 24 for d in res.dropped)  # only apology pairs go
    assert len(res.dropped) < 24  # no more than the cue needs
    assert [r["icon2_index"] for r in res.kept] == sorted(r["icon2_index"] for r in res.kept)
    report = shortcut_report(res.kept)
    assert max(f["strength"] for f in report["features"]) < 0.7  # the audit agrees
    again = gate_surface_cues(recs, threshold=0.7)
    assert again.kept == res.kept and again.dropped == res.dropped  # deterministic


def test_the_gate_keeps_everything_without_a_cue_and_stops_at_max_drop():
    clean = _pairs(n_apology=0)
    res = gate_surface_cues(clean)
    assert res.dropped == [] and res.kept == clean and res.complete
    heavy = _pairs(n_apology=40)  # every rejected answer apologises: the cue cannot be removed
    res = gate_surface_cues(heavy, max_drop=0.25)
    assert not res.complete and len(res.dropped) == 10 and res.after["strength"] >= 0.7
    with pytest.raises(ValueError, match="threshold"):
        gate_surface_cues(clean, threshold=0.4)
    few = gate_surface_cues(_pairs(n=6, n_apology=6))
    assert few.kept and not few.dropped and not few.complete  # too few pairs to judge a cue


def test_the_gate_writes_train_jsonl_resumes_and_regates_on_other_settings(tmp_path):
    recs = _pairs()
    train, summary = apply_surface_gate(recs, tmp_path)
    assert (tmp_path / GATE_FILE).is_file() and training_pairs_path(
        tmp_path
    ) == tmp_path / TRAIN_FILE
    on_disk = [json.loads(line) for line in (tmp_path / TRAIN_FILE).read_text().splitlines()]
    assert on_disk == train and summary["n_kept"] == len(train)
    assert summary["dropped_by_cue"] and summary["n_in"] == len(recs)
    again, _ = apply_surface_gate(recs[:5], tmp_path)  # finished: read back, not recomputed
    assert again == train
    stricter, s2 = apply_surface_gate(recs, tmp_path, threshold=0.6)
    assert s2["threshold"] == 0.6 and len(stricter) <= len(train)
    off = SimpleNamespace(surface_gate=False, max_cue=0.7, max_gate_drop=0.5)
    assert training_pairs(recs, off, tmp_path / "off") == recs
    assert training_pairs_path(tmp_path / "off") == tmp_path / "off" / "pairs.jsonl"
