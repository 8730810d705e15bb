import json
import re
from collections import Counter
from importlib import resources
from itertools import combinations

import pytest

from icon2_lens.instructions.builtin import load_eval_instructions, load_instructions

CATEGORIES = {
    "violence",
    "weapons",
    "illegal_access",
    "fraud",
    "harassment",
    "self_harm",
    "dangerous_chemicals",
    "privacy",
    "misinformation",
    "theft",
}


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def _jaccard(a: str, b: str) -> float:
    x, y = set(_norm(a).split()), set(_norm(b).split())
    return len(x & y) / len(x | y)


def test_file_is_valid_jsonl():
    raw = (
        resources.files("icon2_lens.instructions")
        .joinpath("data/eval_instructions.jsonl")
        .read_bytes()
    )
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").splitlines()
    assert all(line.strip() for line in lines)
    for line in lines:
        rec = json.loads(line)
        assert set(rec) <= {"id", "instruction", "kind", "category"}


def test_counts_per_kind():
    recs = load_eval_instructions()
    assert Counter(r["kind"] for r in recs) == {"benign": 96, "harmful": 32}
    assert len(load_eval_instructions("benign")) == 96
    assert len(load_eval_instructions("harmful")) == 32


def test_records_are_well_formed():
    for r in load_eval_instructions():
        assert set(r) == {"id", "instruction", "kind", "category"}
        assert r["instruction"] == r["instruction"].strip() and r["instruction"]
        if r["kind"] == "benign":
            assert re.fullmatch(r"b\d{3}", r["id"]) and r["category"] is None
            assert 5 <= len(r["instruction"].split()) <= 30
        else:
            assert re.fullmatch(r"h\d{3}", r["id"]) and r["category"] in CATEGORIES


def test_ids_and_instructions_unique():
    recs = load_eval_instructions()
    assert len({r["id"] for r in recs}) == len(recs)
    assert len({_norm(r["instruction"]) for r in recs}) == len(recs)


def test_no_near_duplicates_within_set():
    texts = [r["instruction"] for r in load_eval_instructions()]
    close = [(a, b) for a, b in combinations(texts, 2) if _jaccard(a, b) > 0.7]
    assert not close


def test_no_overlap_with_builtin_splits():
    builtin = load_instructions("train") + load_instructions("heldout")
    seen = {_norm(s) for s in builtin}
    texts = [r["instruction"] for r in load_eval_instructions()]
    assert not [t for t in texts if _norm(t) in seen]
    close = [(t, s) for t in texts for s in builtin if _jaccard(t, s) > 0.7]
    assert not close


def test_kind_filter_and_n():
    assert all(r["kind"] == "harmful" for r in load_eval_instructions("harmful"))
    assert all(r["kind"] == "benign" for r in load_eval_instructions("benign"))
    first = load_eval_instructions("benign", n=5)
    assert [r["id"] for r in first] == [f"b00{i}" for i in range(1, 6)]
    assert first == load_eval_instructions("benign")[:5]
    assert len(load_eval_instructions(n=128)) == 128


def test_returns_fresh_copies():
    load_eval_instructions()[0]["instruction"] = "changed"
    assert load_eval_instructions()[0]["instruction"] != "changed"


def test_unknown_kind_names_valid_ones():
    with pytest.raises(ValueError, match="'benign'.*'harmful'"):
        load_eval_instructions("safe")


@pytest.mark.parametrize("kind, n", [("harmful", 33), ("benign", 97), (None, 129)])
def test_too_many_raises(kind, n):
    with pytest.raises(ValueError, match="only"):
        load_eval_instructions(kind, n=n)


def test_n_below_one_raises():
    with pytest.raises(ValueError, match="at least 1"):
        load_eval_instructions(n=0)
