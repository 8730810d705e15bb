"""The surface gate: leave out the pairs through which one surface cue gives chosen away.

DPO learns whatever tells chosen from rejected. When one surface feature does it well (the
rejected answers open with "I'm sorry", the chosen ones are longer), training on the pairs teaches
that cue rather than the criterion. The gate measures every feature of
:func:`~icon2_lens.judge.surface.feature_aucs` (length, apology opener, lists, markdown, hedges,
repetition, frequent opening words) and, while the strongest reaches ``threshold`` (cue strength
``max(AUC, 1 − AUC)``, the audit's shortcut threshold), leaves out the pair that carries that cue
most (the largest chosen − rejected difference in the cue's direction; ties: the earlier pair).
One pair at a time, so no more pairs go than the cue needs: the result is a register- and
length-matched subset. It stops, and says so, when it would leave out more than ``max_drop`` of
the pairs. A bag-of-words classifier can still tell the answers apart (steering changes the
words); that is the audit's broader check, not a single cue.

Files, in the pairs folder: ``train.jsonl`` (the pairs DPO trains on) and ``gate.json`` (the
settings, what was left out and why, the strongest cue before and after; written last, marking
the gate finished).

Example:
    >>> recs = [{"prompt": f"q{i}", "chosen": f"Answer {i} is here.",
    ...          "rejected": f"Sorry, answer {i}." if i < 10 else f"Answer {i}, I think."}
    ...         for i in range(20)]
    >>> res = gate_surface_cues(recs, threshold=0.7)
    >>> res.before["strength"], res.complete, len(res.kept), res.after["strength"] < 0.7
    (0.75, True, 16, True)
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icon2_lens._files import read_jsonl, read_marker, write_json, write_jsonl
from icon2_lens.judge.surface import feature_aucs, feature_values

from .records import answer_pairs

__all__ = [
    "GateResult",
    "gate_surface_cues",
    "apply_surface_gate",
    "training_pairs",
    "training_pairs_path",
    "GATE_FILE",
    "TRAIN_FILE",
]

log = logging.getLogger(__name__)

GATE_FILE = "gate.json"
TRAIN_FILE = "train.jsonl"
#: Fewer pairs than this are not gated (AUCs of a handful of answers mean little).
MIN_PAIRS = 10


@dataclass
class GateResult:
    """What the gate kept and left out.

    Attributes:
        kept: The records kept, in their input order.
        dropped: ``{"position", "icon2_index", "cue", "strength"}`` per record left out, in order.
        before: The strongest cue of the whole set (``feature``, ``strength``, ``higher_in``).
        after: The strongest cue of the kept set.
        complete: Whether every cue ended below the threshold.
        threshold: The cue strength that counts as a shortcut.
    """

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    threshold: float = 0.7

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (``gate.json``), without the kept records."""
        return {
            "threshold": self.threshold,
            "n_in": len(self.kept) + len(self.dropped),
            "n_kept": len(self.kept),
            "n_dropped": len(self.dropped),
            "complete": self.complete,
            "before": self.before,
            "after": self.after,
            "dropped_by_cue": _count(d["cue"] for d in self.dropped),
            "dropped": self.dropped,
        }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _top(pairs: list[tuple[str, str]], min_count: int) -> dict[str, Any]:
    row = feature_aucs(pairs, min_count=min_count).iloc[0]
    return {
        "feature": str(row["feature"]),
        "strength": float(row["strength"]),
        "higher_in": str(row["higher_in"]),
    }


def gate_surface_cues(
    records: Sequence[dict[str, Any]],
    *,
    threshold: float = 0.7,
    max_drop: float = 0.5,
    min_count: int = 5,
) -> GateResult:
    """Leave out pairs, one at a time, until no single surface cue reaches ``threshold``.

    Args:
        records: TRL preference records (standard or conversational).
        threshold: Cue strength (AUC) at which a feature counts as a shortcut.
        max_drop: Largest share of the pairs that may be left out; the gate stops there,
            incomplete.
        min_count: An opening word pair must occur this often to count as a feature.

    Raises:
        ValueError: ``threshold`` outside (0.5, 1] or ``max_drop`` outside [0, 1).
    """
    if not 0.5 < threshold <= 1:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    if not 0 <= max_drop < 1:
        raise ValueError(f"max_drop must be in [0, 1), got {max_drop}")
    records = list(records)
    texts = answer_pairs(records)
    alive = list(range(len(records)))
    if len(records) < MIN_PAIRS:
        return GateResult(records, threshold=threshold, complete=False)
    limit = math.floor(max_drop * len(records))
    before = top = _top(texts, min_count)
    dropped: list[dict[str, Any]] = []
    complete = True
    while top["strength"] >= threshold:
        if len(dropped) >= limit:
            complete = False
            break
        chosen = feature_values([texts[i][0] for i in alive], top["feature"])
        rejected = feature_values([texts[i][1] for i in alive], top["feature"])
        push = (chosen - rejected) * (1.0 if top["higher_in"] == "chosen" else -1.0)
        k = int(np.argmax(push))  # the first of the largest: ties go to the earlier pair
        if push[k] <= 0:
            complete = False
            break
        i = alive.pop(k)
        dropped.append(
            {
                "position": i,
                "icon2_index": records[i].get("icon2_index"),
                "cue": top["feature"],
                "strength": top["strength"],
            }
        )
        top = _top([texts[j] for j in alive], min_count)
    return GateResult(
        [records[i] for i in alive],
        dropped,
        before=before,
        after=top,
        complete=complete,
        threshold=threshold,
    )


def apply_surface_gate(
    records: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    threshold: float = 0.7,
    max_drop: float = 0.5,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Gate ``records`` and write ``train.jsonl`` and ``gate.json`` into ``out``; resumable.

    A folder whose ``gate.json`` records the same settings is finished: its ``train.jsonl`` is
    read back (the gate is cheap and deterministic, so other settings simply gate again).

    Returns:
        ``(train_records, summary)``.
    """
    out = Path(out)
    done = read_marker(out / GATE_FILE)
    if done is not None and (done.get("threshold"), done.get("max_drop")) == (threshold, max_drop):
        return read_jsonl(out / TRAIN_FILE), done
    res = gate_surface_cues(records, threshold=threshold, max_drop=max_drop)
    summary = {**res.summary(), "max_drop": max_drop}
    if len(records) < MIN_PAIRS:
        summary["skipped"] = f"fewer than {MIN_PAIRS} pairs"
    if res.dropped:
        log.info(
            "surface gate: left out %d of %d pairs (%s); strongest cue now %s %.2f",
            len(res.dropped),
            len(records),
            ", ".join(f"{k} {v}" for k, v in summary["dropped_by_cue"].items()),
            res.after.get("feature"),
            res.after.get("strength", float("nan")),
        )
    if not res.complete and "skipped" not in summary:
        log.warning(
            "surface gate: %r still tells chosen from rejected with strength %.2f after leaving "
            "out %d pairs (the most it may: max_drop %.2f); DPO can learn it",
            res.after.get("feature"),
            res.after.get("strength", float("nan")),
            len(res.dropped),
            max_drop,
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / TRAIN_FILE, res.kept)
    write_json(summary, out / GATE_FILE)
    return res.kept, summary


def training_pairs(
    records: Sequence[dict[str, Any]], config: Any, out: str | Path
) -> list[dict[str, Any]]:
    """The pairs DPO trains on: gated into ``out`` when ``config.surface_gate``, else ``records``.

    ``config`` is a :class:`~icon2_lens.pairs.icon2.PairConfig` (its ``surface_gate``,
    ``max_cue`` and ``max_gate_drop``).
    """
    if not config.surface_gate:
        return list(records)
    train, _ = apply_surface_gate(
        records, out, threshold=config.max_cue, max_drop=config.max_gate_drop
    )
    return train


def training_pairs_path(pairs_dir: str | Path) -> Path:
    """``train.jsonl`` of a pairs folder when the gate wrote one, else its ``pairs.jsonl``."""
    pairs_dir = Path(pairs_dir)
    gated = pairs_dir / TRAIN_FILE
    return (
        gated
        if (pairs_dir / GATE_FILE).is_file() and gated.is_file()
        else pairs_dir / "pairs.jsonl"
    )
