"""Sharding batch work across processes (``torchrun`` / ``accelerate launch``); this module imports
nothing of icon2_lens but :mod:`icon2_lens._files`.

The unit of work is a whole batch, formed exactly as one process forms it, so every row sees the
same batch composition and padding as in a single process and the outputs are byte-identical.
Batches are dealt out **round robin** (rank ``r`` of ``w`` takes batches ``r, r + w, r + 2w, …``
of the list every rank computes alike), which also spreads the short last batch and any
expensive stretch of the list over the ranks.

* :class:`Shard`: this process's ``rank`` of ``world``; :func:`current_shard` detects a
  distributed launch (``WORLD_SIZE > 1``, or an initialised ``accelerate.PartialState`` of several
  processes) and otherwise returns ``Shard(0, 1)`` without importing accelerate or initialising
  ``torch.distributed``.
* :func:`wait_for_everyone` (a barrier; nothing with one process) and :func:`main_first` (rank 0
  does the block first, e.g. writing ``settings.json``, then the others).
* Part files: with several processes, rank ``r`` appends to ``<stem>.part-<r>-of-<w><suffix>``
  beside the main file (:meth:`Shard.part_path`). :func:`read_with_parts` reads the main file and
  every part file (of any world size, so a resumed run may use another number of processes);
  :func:`merge_parts` writes main + parts, de-duplicated and sorted by a key, atomically as the
  main file and deletes the parts. A single process never creates a part file; it merges only
  parts an interrupted multi-process run left behind.

Example:
    >>> shard = Shard(rank=1, world=2)
    >>> shard.mine(["b0", "b1", "b2", "b3", "b4"])
    ['b1', 'b3']
    >>> shard.part_path("out/pairs.jsonl").name
    'pairs.part-1-of-2.jsonl'
    >>> current_shard()  # a plain process
    Shard(rank=0, world=1)
"""

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from icon2_lens._files import read_jsonl, write_jsonl

__all__ = [
    "Shard",
    "current_shard",
    "wait_for_everyone",
    "main_first",
    "part_files",
    "read_with_parts",
    "merge_parts",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch: ``rank`` in ``0 .. world - 1``."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0..{self.world - 1}, got {self.rank}")

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes shared files and shows progress."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (the same list on every rank), round robin."""
        return list(items[self.rank :: self.world])

    def part_path(self, path: str | Path) -> Path:
        """The part file this rank appends to instead of ``path``."""
        path = Path(path)
        return path.with_name(f"{path.stem}.part-{self.rank}-of-{self.world}{path.suffix}")


def _accelerate_state() -> Any:
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState reads ACCELERATE_USE_CPU only through its `cpu` argument; without it, a CPU-only
    # launch (debug_launcher, torchrun) would come up as one process
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and state.num_processes != world:
        # a one-process state inherited through fork (a parent that trained or generated before
        # launching, as a notebook or a test session does) describes the parent, not this launch
        PartialState._reset_state()
        state = PartialState(cpu=cpu)
    return state


def current_shard() -> Shard:
    """The launch this process belongs to; ``Shard(0, 1)`` in a plain process.

    A launch is detected from ``WORLD_SIZE > 1`` (set by ``torchrun``, ``accelerate launch`` and
    ``accelerate.debug_launcher``) or from an already initialised ``PartialState`` of several
    processes; only then is ``accelerate.PartialState()`` created (which sets up
    ``torch.distributed``, gloo on CPU).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        accelerate_state = sys.modules.get("accelerate.state")
        shared = getattr(getattr(accelerate_state, "PartialState", None), "_shared_state", None)
        if not shared or shared.get("num_processes", 1) <= 1:
            return Shard()
    state = _accelerate_state()
    return Shard(rank=state.process_index, world=state.num_processes)


def wait_for_everyone(shard: Shard) -> None:
    """A barrier across the launch (nothing with one process)."""
    if shard.sharded:
        _accelerate_state().wait_for_everyone()


@contextmanager
def main_first(shard: Shard) -> Iterator[None]:
    """Run the block on rank 0 first and then on the others (e.g. create or check a shared file).

    Rank 0 reaches the barrier even if its block raises, so the others then run the block
    themselves (and usually raise the same error) instead of waiting forever.
    """
    if not shard.main:
        wait_for_everyone(shard)
        yield
        return
    try:
        yield
    finally:
        wait_for_everyone(shard)


def part_files(path: str | Path) -> list[Path]:
    """The part files beside ``path`` of any world size, ordered by (world, rank)."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}\.part-(\d+)-of-(\d+){re.escape(path.suffix)}")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.append(((int(m.group(2)), int(m.group(1))), p))
    return [p for _, p in sorted(found)]


def read_with_parts(
    path: str | Path, key: Callable[[dict[str, Any]], Any], *, header: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(header rows, records)`` of ``path`` and its part files, each ``key`` once (the first).

    The first ``header`` lines of the main file are returned apart; part files hold records only.
    Files end at a record boundary afterwards (``read_jsonl(repair=True)``). A record can be in
    both the main file and a part only after a merge was interrupted before deleting the parts;
    it is then the same record.
    """
    main = read_jsonl(path, repair=True)
    head, rows = main[:header], main[header:]
    for part in part_files(path):
        rows += read_jsonl(part, repair=True)
    seen, out = set(), []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return head, out


def merge_parts(
    path: str | Path, key: Callable[[dict[str, Any]], Any], *, header: int = 0
) -> list[dict[str, Any]]:
    """Write ``path`` as its header, then its and its parts' records sorted by ``key``; delete the parts.

    The main file is replaced atomically before any part is deleted, so an interruption loses
    nothing (the next run reads the duplicates once). Call it on one process only. Returns the
    records (without the header).
    """
    parts = part_files(path)
    head, rows = read_with_parts(path, key, header=header)
    rows.sort(key=key)
    if head or rows or Path(path).exists():  # one process writes no file without records either
        write_jsonl(path, head + rows)
    for part in parts:
        part.unlink()
    return rows
