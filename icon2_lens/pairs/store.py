"""One pair store for every pair source: what is already written, and appending batch by batch.

Every instruction ends up in exactly one line of ``pairs.jsonl`` or ``dropped.jsonl``; the
directory's ``settings.json`` records what made the pairs, and a re-run with other settings is
refused (:func:`icon2_lens._files.check_settings`). Batches are fixed slices of the instruction
list, so a resumed run makes the same batches as an uninterrupted one.

Under a multi-process launch (``torchrun``, ``accelerate launch``; see docs/scaling.md) each rank
takes its share of those batches (:meth:`PairStore.todo`, round robin, :mod:`icon2_lens._shard`)
and appends to its own part files (``pairs.part-<rank>-of-<world>.jsonl``, likewise for
``dropped.jsonl``); :meth:`PairStore.result` has rank 0 merge them into the main files in
instruction order, byte-identical to what one process writes. A resumed run, with any number of
processes, counts the part files as done.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from icon2_lens._files import append_jsonl, check_settings, read_jsonl
from icon2_lens._shard import (
    Shard,
    current_shard,
    main_first,
    merge_parts,
    part_files,
    read_with_parts,
    wait_for_everyone,
)

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


def _index(record: Mapping[str, Any]) -> int:
    return record["icon2_index"]


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
        self.fill = dict(fill or {})
        self.records: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.pairs_path: Path | None = None
        self.dropped_path: Path | None = None
        #: This process's share of a launch; without ``out`` every process makes everything.
        self.shard = Shard()
        self._merge = False
        if out is not None:
            out_dir = Path(out)
            out_dir.mkdir(parents=True, exist_ok=True)
            self.shard = current_shard()
            self.pairs_path, self.dropped_path = out_dir / PAIRS_FILE, out_dir / DROPPED_FILE
            # rank 0 writes settings.json (if absent) and repairs torn tails before the others read
            with main_first(self.shard):
                check_settings(out_dir / SETTINGS_FILE, settings, what="pairs", defaults=defaults)
                self._read(with_parts=True)
            wait_for_everyone(self.shard)  # every rank has read before any appends
            self._merge = self.shard.sharded or any(
                part_files(p) for p in (self.pairs_path, self.dropped_path)
            )
        self.done = {r["icon2_index"] for r in self.records} | {
            r["icon2_index"] for r in self.dropped
        }
        unknown = self.done - set(self.ids)
        if unknown:
            raise ValueError(
                f"{out} holds pairs for instructions {sorted(unknown)[:5]} that are not in this run's list; "
                "use another output directory"
            )
        if self.done and self.shard.main:
            log.info("resuming: %d of %d instructions already done", len(self.done), len(self.ids))

    def _read(self, *, with_parts: bool) -> None:
        assert self.pairs_path is not None and self.dropped_path is not None
        if with_parts:
            (_, self.records), (_, self.dropped) = (
                read_with_parts(p, _index) for p in (self.pairs_path, self.dropped_path)
            )
        else:
            self.records, self.dropped = read_jsonl(self.pairs_path), read_jsonl(self.dropped_path)
        for rec in self.records + self.dropped:
            for key, value in self.fill.items():
                rec.setdefault(key, value)

    def todo(self, kept: Sequence[KeptInstruction], batch_size: int) -> list[list[KeptInstruction]]:
        """Fixed slices of ``kept`` (so resuming does not change batches), without what is done;
        under a multi-process launch, this rank's share of them (round robin)."""
        batches = [list(kept[i : i + batch_size]) for i in range(0, len(kept), batch_size)]
        todo = [[k for k in b if k.index not in self.done] for b in batches]
        return self.shard.mine([b for b in todo if b])

    def add(self, new_pairs: list[dict[str, Any]], new_drops: list[dict[str, Any]]) -> None:
        """Keep one batch's pairs and drops, appending them to the files first."""
        if self.pairs_path is not None and self.dropped_path is not None:
            pairs_path, dropped_path = self.pairs_path, self.dropped_path
            if self.shard.sharded:
                pairs_path, dropped_path = map(self.shard.part_path, (pairs_path, dropped_path))
            append_jsonl(dropped_path, new_drops)
            append_jsonl(pairs_path, new_pairs)  # last: a batch counts as done once its pairs are
        self.records.extend(new_pairs)
        self.dropped.extend(new_drops)

    def result(self) -> PairsResult:
        """Everything done so far, in instruction order, with :func:`pair_counts`.

        Under a launch (or after one left part files) every rank must call it: rank 0 merges the
        part files into the main files, and every rank then returns the merged result.
        """
        order = {i: n for n, i in enumerate(self.ids)}
        if self._merge:
            wait_for_everyone(self.shard)  # every rank has appended its last batch
            if self.shard.main:
                for path in (self.pairs_path, self.dropped_path):
                    merge_parts(path, lambda r: order[r["icon2_index"]])
            wait_for_everyone(self.shard)  # the merged files are complete
            self._read(with_parts=False)
            self._merge = False
        self.records.sort(key=lambda r: order[r["icon2_index"]])
        self.dropped.sort(key=lambda r: order[r["icon2_index"]])
        return PairsResult(
            self.records, self.dropped, pair_counts(self.records, self.dropped, len(self.ids))
        )
