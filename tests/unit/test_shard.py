"""Several processes write what one process writes, byte for byte (icon2_lens._shard).

Every launch goes through ``accelerate.debug_launcher`` (forked CPU processes, gloo on loopback),
the one-process reference too, so all runs start alike; each process uses one thread, so float
reductions are the same in all of them.
"""

import os
import time
from pathlib import Path

import pytest
import torch
from accelerate import debug_launcher

import icon2_lens.instructions.synthesize as syn
from icon2_lens._files import read_jsonl
from icon2_lens._shard import (
    Shard,
    current_shard,
    merge_parts,
    part_files,
    read_with_parts,
    wait_for_everyone,
)
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.directions.set import DirectionSet
from icon2_lens.pairs.icon2 import PairConfig, generate_pairs
from icon2_lens.pairs.store import PairStore
from icon2_lens.testing import TINY_REQUESTS, tiny_model

WORDS = list(TINY_REQUESTS)


class _Stop(Exception):
    """Stands for a kill after the part files were appended to, before the merge."""


def _lag_rank_1(obj, name: str) -> None:
    """Rank 1 calls ``obj.name`` a second late, so a merge that does not wait for it loses rows."""
    real = getattr(obj, name)

    def late(*args, **kwargs):
        if current_shard().rank == 1:
            time.sleep(1.0)
        return real(*args, **kwargs)

    setattr(obj, name, late)  # only in this forked process


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # also keeps accelerate from setting another count
    torch.set_num_threads(1)


def _pairs_worker(out: str, limit: int | None, interrupt: bool, lag: bool = False) -> None:
    _one_thread()
    if lag:
        _lag_rank_1(PairStore, "add")
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    sets = {}
    for name in ("a", "b"):
        v = torch.nn.functional.normalize(torch.randn(2, model.cfg.d_model, generator=g), dim=-1)
        sets[name] = DirectionSet(
            criterion=name,
            layers=(0, 1),
            vectors=v,
            method="mean_diff",
            stats=({"mean_resid_norm": 50.0},) * 2,
        )
    kept = [KeptInstruction(10 + i, w, "ab"[i % 3 == 0], float(i)) for i, w in enumerate(WORDS)]
    config = PairConfig(
        allow_any_gamma=True,
        gamma_pos=2.0,
        gamma_neg=-2.0,
        layers=(0, 1),
        batch_size=3,  # 4 batches of 3, 3, 3 and 1 instructions
        max_repetition=0.9,
        max_new_tokens=6,
        do_sample=True,
        seed=1,
    )
    if interrupt:

        def stop(self):
            wait_for_everyone(self.shard)  # both ranks have appended their batch
            raise _Stop

        PairStore.result = stop  # only in this forked process
    res = generate_pairs(model, kept, sets, config, out=out, progress=False, limit=limit)
    # every rank returns the merged result: what the files hold
    assert res.records == read_jsonl(Path(out) / "pairs.jsonl")
    assert res.dropped == read_jsonl(Path(out) / "dropped.jsonl")


def _synthesis_worker(raw: str, n: int, interrupt: bool, lag: bool = False) -> None:
    _one_thread()
    if lag:
        _lag_rank_1(syn, "append_jsonl")
    if interrupt:
        real = syn.generate_rows
        calls = []

        def once(*args, **kwargs):
            if calls:
                wait_for_everyone(current_shard())  # both ranks have appended their batch
                raise _Stop
            calls.append(1)
            return real(*args, **kwargs)

        syn.generate_rows = once  # only in this forked process
    config = syn.SynthesisConfig(n=n, max_new_tokens=6, batch_size=3, seed=5)
    raw_rows, report = syn.synthesize_instructions(
        tiny_model(), config, raw_path=raw, progress=False
    )
    assert raw_rows == read_jsonl(raw)[1:]
    syn.write_synthesis(
        report,
        config,
        len(raw_rows),
        instructions=Path(raw).with_name("instructions.jsonl"),
        summary=Path(raw).with_name("synthesis.json"),
    )


def _launch(fn, *args, n: int, fails: bool = False) -> None:
    if fails:
        with pytest.raises(Exception, match="_Stop"):
            debug_launcher(fn, args=args, num_processes=n)
    else:
        debug_launcher(fn, args=args, num_processes=n)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "pairs"
    _launch(_pairs_worker, str(out), None, False, n=1)
    return out


def test_two_processes_write_the_pairs_one_process_writes(reference, tmp_path):
    ref = _files(reference)
    assert read_jsonl(reference / "pairs.jsonl") and len(ref) >= 2  # something to compare
    _launch(_pairs_worker, str(tmp_path), None, False, True, n=2)  # rank 1 appends late
    assert _files(tmp_path) == ref  # no part file left, the main files byte-identical


@pytest.mark.parametrize("n_resume", [2, 1])
def test_an_interrupted_two_process_run_resumes_to_the_same_files(reference, tmp_path, n_resume):
    _launch(_pairs_worker, str(tmp_path), 1, True, n=2, fails=True)
    parts = part_files(tmp_path / "pairs.jsonl") + part_files(tmp_path / "dropped.jsonl")
    assert parts and not (tmp_path / "pairs.jsonl").exists()  # killed before the merge
    done = {r["icon2_index"] for p in parts for r in read_jsonl(p)}
    assert done == set(range(10, 16))  # one batch of 3 each: batches 0 and 1
    _launch(_pairs_worker, str(tmp_path), None, False, n=n_resume)
    assert _files(tmp_path) == _files(reference)


def test_a_limited_run_merges_and_a_run_of_another_size_finishes_it(reference, tmp_path):
    _launch(_pairs_worker, str(tmp_path), 1, False, n=2)
    assert not part_files(tmp_path / "pairs.jsonl")
    done = [r["icon2_index"] for r in read_jsonl(tmp_path / "pairs.jsonl")]
    done += [r["icon2_index"] for r in read_jsonl(tmp_path / "dropped.jsonl")]
    assert sorted(done) == list(range(10, 16))
    _launch(_pairs_worker, str(tmp_path), 1, False, n=1)  # one more batch, one process
    _launch(_pairs_worker, str(tmp_path), None, False, n=2)
    assert _files(tmp_path) == _files(reference)


def test_one_process_makes_no_part_file_and_no_process_group(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    made = []
    import icon2_lens.pairs.store as store

    real = store.append_jsonl
    monkeypatch.setattr(store, "append_jsonl", lambda p, rows: (made.append(p), real(p, rows)))
    model = tiny_model()
    syn.synthesize_raw(
        model, syn.SynthesisConfig(n=4, max_new_tokens=4, batch_size=2), out=tmp_path / "raw.jsonl"
    )
    sets = {
        "a": DirectionSet(
            criterion="a",
            layers=(0, 1),
            vectors=torch.nn.functional.normalize(torch.ones(2, model.cfg.d_model), dim=-1),
            stats=({"mean_resid_norm": 50.0},) * 2,
        )
    }
    kept = [KeptInstruction(i, w, "a", 0.0) for i, w in enumerate(WORDS[:4])]
    config = PairConfig(layers=(0, 1), batch_size=2, max_new_tokens=4)
    generate_pairs(model, kept, sets, config, out=tmp_path / "pairs", progress=False)
    assert made and all(".part-" not in Path(p).name for p in made)
    assert not [p for p in tmp_path.rglob("*") if ".part-" in p.name]
    assert not torch.distributed.is_initialized()
    assert current_shard() == Shard()


def test_two_processes_synthesize_what_one_synthesizes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _launch(_synthesis_worker, str(one / "raw.jsonl"), 11, False, n=1)
    _launch(_synthesis_worker, str(two / "raw.jsonl"), 11, False, True, n=2)  # rank 1 appends late
    ref = _files(one)
    assert set(ref) == {"raw.jsonl", "instructions.jsonl", "synthesis.json"}
    assert len(read_jsonl(one / "raw.jsonl")) == 12  # header and 11 samples
    assert _files(two) == ref


@pytest.mark.parametrize("n_resume", [2, 1])
def test_interrupted_synthesis_resumes_to_the_same_files(tmp_path, n_resume):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _launch(_synthesis_worker, str(one / "raw.jsonl"), 11, False, n=1)
    _launch(_synthesis_worker, str(two / "raw.jsonl"), 11, True, n=2, fails=True)
    parts = part_files(two / "raw.jsonl")
    assert parts and len(read_jsonl(two / "raw.jsonl")) == 1  # only the header in the main file
    assert sorted(r["index"] for p in parts for r in read_jsonl(p)) == list(range(6))
    _launch(_synthesis_worker, str(two / "raw.jsonl"), 11, False, n=n_resume)
    assert _files(two) == _files(one)


def test_round_robin_covers_every_batch_once():
    items = list(range(7))
    shares = [Shard(rank=r, world=3).mine(items) for r in range(3)]
    assert sorted(sum(shares, [])) == items
    assert shares[0] == [0, 3, 6]
    with pytest.raises(ValueError, match="rank"):
        Shard(rank=2, world=2)


def test_merge_keeps_the_header_sorts_and_drops_duplicates(tmp_path):
    from icon2_lens._files import append_jsonl

    main = tmp_path / "raw.jsonl"
    append_jsonl(main, [{"h": 1}, {"index": 0}, {"index": 3}])
    append_jsonl(Shard(1, 2).part_path(main), [{"index": 2}, {"index": 3}])
    append_jsonl(Shard(0, 3).part_path(main), [{"index": 1}])
    key = lambda r: r["index"]  # noqa: E731
    head, rows = read_with_parts(main, key, header=1)
    assert head == [{"h": 1}] and sorted(map(key, rows)) == [0, 1, 2, 3]
    assert merge_parts(main, key, header=1) == [{"index": i} for i in range(4)]
    assert read_jsonl(main) == [{"h": 1}] + [{"index": i} for i in range(4)]
    assert not part_files(main)
    assert merge_parts(tmp_path / "none.jsonl", key) == []
    assert not (tmp_path / "none.jsonl").exists()


def _world_worker(queue_dir: str) -> None:
    shard = current_shard()
    Path(queue_dir, f"rank{shard.rank}").write_text(str(shard.world))


def test_a_stale_one_process_state_from_the_parent_is_not_taken_for_the_launch(tmp_path):
    """A parent that already made an accelerate state (a DPO run, a notebook) and then launches
    two processes: each child must see the launch (2), not the parent's one-process state."""
    from accelerate import PartialState

    PartialState(cpu=True)  # the parent's own single-process state, inherited through fork
    _launch(_world_worker, str(tmp_path), n=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"2"}
