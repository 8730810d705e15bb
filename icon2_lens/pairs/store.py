"""One pair store for every pair source: what is already written, and appending batch by batch.

Every instruction ends up in exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; the
directory's ``settings.json`` records what made the pairs, and a re-run with other settings is
refused (:func:`icon2_lens._files.check_settings`). Batches are fixed slices of the instruction
list, so a resumed run makes the same batches as an uninterrupted one.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icon2_lens._files import append_jsonl, check_settings, read_jsonl

from .records import KeptInstruction, PairsResult, pair_counts

__all__ = ["PairStore", "check_kept", "PAIRS_FILE", "DROPPED_FILE", "SETTINGS_FILE"]

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
DROPPED_FILE = "dropped.jsonl"
SETTINGS_FILE = "settings.json"


def check_kept(kept: Sequence[KeptInstruction]) -> list[int]:
    """The instruction indices of ``kept``, which must be non-empty and unique."""
    if not kept:
        raise ValueError("no instructions to make pairs from")
    ids = [k.index for k in kept]
    if len(set(ids)) != len(ids):
        raise ValueError("instruction indices must be unique")
    return ids


class PairStore:
    """The pairs and drops of one run: read back from ``out`` (resuming) and appended to it batch by batch.

    Every instruction ends up in exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; the
    directory's ``settings.json`` must match ``settings`` (keys it lacks are taken from
    ``defaults``, and records read back get ``fill`` for keys they lack). Without ``out``
    everything stays in memory.
    """

    def __init__(
        self,
        out: str | Path | None,
        settings: dict[str, Any],
        ids: Sequence[int],
        *,
        defaults: Mapping[str, Any] | None = None,
        fill: Mapping[str, Any] | None = None,
    ) -> None:
        self.ids = list(ids)
        self.records: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.pairs_path: Path | None = None
        self.dropped_path: Path | None = None
        if out is not None:
            out_dir = Path(out)
            out_dir.mkdir(parents=True, exist_ok=True)
            check_settings(out_dir / SETTINGS_FILE, settings, what="pairs", defaults=defaults)
            self.pairs_path, self.dropped_path = out_dir / PAIRS_FILE, out_dir / DROPPED_FILE
            self.records = read_jsonl(self.pairs_path, repair=True)
            self.dropped = read_jsonl(self.dropped_path, repair=True)
            for rec in self.records + self.dropped:
                for key, value in (fill or {}).items():
                    rec.setdefault(key, value)
        self.done = {r["icon2_index"] for r in self.records} | {
            r["icon2_index"] for r in self.dropped
        }
        unknown = self.done - set(self.ids)
        if unknown:
            raise ValueError(
                f"{out} holds pairs for instructions {sorted(unknown)[:5]} that are not in this run's list; "
                "use another output directory"
            )
        if self.done:
            log.info("resuming: %d of %d instructions already done", len(self.done), len(self.ids))

    def todo(self, kept: Sequence[KeptInstruction], batch_size: int) -> list[list[KeptInstruction]]:
        """Fixed slices of ``kept`` (so resuming does not change batches), without what is done."""
        batches = [list(kept[i : i + batch_size]) for i in range(0, len(kept), batch_size)]
        todo = [[k for k in b if k.index not in self.done] for b in batches]
        return [b for b in todo if b]

    def add(self, new_pairs: list[dict[str, Any]], new_drops: list[dict[str, Any]]) -> None:
        """Keep one batch's pairs and drops, appending them to the files first."""
        if self.pairs_path is not None:
            append_jsonl(self.dropped_path, new_drops)
            append_jsonl(
                self.pairs_path, new_pairs
            )  # written last: a batch counts as done once its pairs are
        self.records.extend(new_pairs)
        self.dropped.extend(new_drops)

    def result(self) -> PairsResult:
        """Everything done so far, in instruction order, with :func:`pair_counts`."""
        order = {i: n for n, i in enumerate(self.ids)}
        self.records.sort(key=lambda r: order[r["icon2_index"]])
        self.dropped.sort(key=lambda r: order[r["icon2_index"]])
        return PairsResult(
            self.records, self.dropped, pair_counts(self.records, self.dropped, len(self.ids))
        )
