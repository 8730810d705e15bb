"""Interrupted writes never leave a silent wrong result (findings 4 and 7).

Two parts:

* the rules of :mod:`icon2_lens._files`: how ``read_jsonl(repair=True)`` ends a file at a record
  boundary, ``append_jsonl`` refusing to glue a record onto an unterminated line, the atomic
  writer, settings files written only when absent and damaged ones named in the error;
* fault injection on the command line: ``synthesize``, ``pairs``, ``extract`` and ``eval`` run in
  a subprocess whose writer is replaced (by a wrapper script in ``tmp_path``, not by the
  library) so that its N-th write to one file writes part of its payload and then SIGKILLs the
  process; the same command run again must finish with files byte-identical to an
  uninterrupted run, so no record is lost, duplicated or merged.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from icon2_lens._files import (
    append_jsonl,
    check_settings,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
    write_text,
)

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- repair rules


def test_a_complete_last_record_without_its_newline_is_kept_and_terminated(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    append_jsonl(path, [{"a": 3}])
    assert path.read_bytes().splitlines() == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']


@pytest.mark.parametrize(
    "tail", [b'{"a": 2, "b', b'{"a": 2}{"a"', b"12", b"[1, 2]", b"   ", b"\x00\x00", b"\xff{"]
)
def test_anything_else_unterminated_at_the_end_is_cut(tmp_path, tail):
    """A torn record, two glued ones, a bare number (the prefix of a longer one), an array,
    blanks, the zeros a crash can leave, bytes that are not UTF-8: none is a whole record."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n' + tail)
    assert read_jsonl(path, repair=True) == [{"a": 1}]
    assert path.read_bytes() == b'{"a": 1}\n'


def test_a_file_holding_only_a_torn_line_is_emptied(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"icon2_synth')
    assert read_jsonl(path, repair=True) == [] and path.read_bytes() == b""
    append_jsonl(path, [{"a": 1}])
    assert read_jsonl(path) == [{"a": 1}]


def test_without_repair_the_file_is_not_changed(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')  # hand-written files often lack the last newline
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}'
    path.write_bytes(b'{"a": 1}\n{"a"')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON"):
        read_jsonl(path)
    assert path.read_bytes() == b'{"a": 1}\n{"a"'


def test_a_damaged_line_before_the_end_is_an_error_even_with_repair(tmp_path):
    """Two records merged on one line (what the old append did) are not cut silently."""
    path = tmp_path / "rows.jsonl"
    data = b'{"a": 1}\n{"a": 2}{"a": 3}\n{"a": 4}\n'
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON.*delete the file"):
        read_jsonl(path, repair=True)
    path.write_bytes(b'{"a": 1}\n{"a": 2}{"a": 3}\n')  # even as the last (terminated) line
    with pytest.raises(ValueError, match=r"rows.jsonl:2"):
        read_jsonl(path, repair=True)
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}{"a": 3}\n'


def test_append_refuses_a_file_that_does_not_end_at_a_record_boundary(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    with pytest.raises(ValueError, match=r"rows.jsonl does not end with a newline.*nothing"):
        append_jsonl(path, [{"a": 3}])
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}'
    append_jsonl(path, [])  # nothing to append: nothing checked, nothing written
    append_jsonl(tmp_path / "new.jsonl", [{"a": 1}, {"a": 2}])
    assert (tmp_path / "new.jsonl").read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_the_atomic_writer_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    write_json({"seed": 1}, path)
    before = path.read_bytes()

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space"):
        write_json({"seed": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]  # no temporary left
    write_text(path, "x")
    write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "settings.json"]


# --------------------------------------------------------------------------- settings files


def test_settings_are_written_only_when_absent(tmp_path):
    path = tmp_path / "settings.json"
    check_settings(path, {"seed": 1, "n": 2}, what="pairs")
    stat = path.stat()
    check_settings(path, {"n": 2, "seed": 1}, what="pairs")
    # an older file lacking a key that takes its default: continues, is not rewritten
    check_settings(path, {"seed": 1, "n": 2, "new": 0}, what="pairs", defaults={"new": 0})
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert json.loads(path.read_text()) == {"seed": 1, "n": 2}
    with pytest.raises(ValueError, match=r"holds pairs written with different settings.*seed"):
        check_settings(path, {"seed": 2, "n": 2}, what="pairs")


@pytest.mark.parametrize(
    "content",
    [b"", b'{"seed": 1, "n', b"[1, 2]\n", b"\xff\xfe{}"],
    ids=["empty", "half", "list", "binary"],
)
def test_a_damaged_settings_file_is_named_with_the_fix(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        check_settings(path, {"seed": 1}, what="pairs")
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert f"else delete {tmp_path} to start over" in message
    assert path.read_bytes() == content  # never overwritten: it may be all that is left


def test_read_json_names_a_damaged_file():
    with pytest.raises(ValueError, match=r"nope.json does not exist"):
        read_json("nope.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models, inputs and an extraction, shared by the CLI tests below."""
    from icon2_lens.cli import main
    from icon2_lens.testing import save_tiny_model

    root = tmp_path_factory.mktemp("faults")
    words = [
        "tell me a story",
        "how do i fix my code",
        "what is good food",
        "write a poem about the cat",
        "help me plan a trip",
    ]
    kept = root / "kept.jsonl"
    kept.write_text(
        "".join(
            json.dumps(
                {"index": i, "instruction": w, "criterion": ("honesty", "helpfulness")[i % 2]}
            )
            + "\n"
            for i, w in enumerate(words)
        )
    )
    instructions = root / "eval.jsonl"
    kinds = ("benign", "benign", "harmful")
    instructions.write_text(
        "".join(json.dumps({"instruction": w, "kind": k}) + "\n" for w, k in zip(words, kinds))
    )
    w = {
        "root": root,
        "model": save_tiny_model(root / "tiny"),
        "other": save_tiny_model(root / "other", seed=1),
        "kept": kept,
        "instructions": instructions,
        "refs": {},
    }
    w["directions"] = root / "ref_extract"
    assert main(COMMANDS["extract"](w, w["directions"])) == 0
    w["refs"]["extract"] = w["directions"]
    return w


def test_a_damaged_settings_file_stops_pairs_with_one_line_naming_it(world, tmp_path, capsys):
    from icon2_lens.cli import main

    out = tmp_path / "pairs"
    out.mkdir()
    (out / "settings.json").write_bytes(b"")  # what a kill left before writes were atomic
    assert main(COMMANDS["pairs"](world, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and f"{out / 'settings.json'} is not valid JSON" in err


def test_a_damaged_diagnostics_file_names_itself(world, tmp_path):
    import shutil

    from icon2_lens.directions.folder import load_extraction

    folder = tmp_path / "ex"
    shutil.copytree(world["directions"], folder)
    (folder / "honesty" / "diagnostics.json").write_text('{"interval": [0, ')
    with pytest.raises(ValueError, match=r"honesty/diagnostics.json is not valid JSON.*delete it"):
        load_extraction(folder)


# --------------------------------------------------------------------------- fault injection

#: Run ``icon2_lens.cli.main`` with the N-th write to one file (by name) killed:
#: FAULT_FILE, FAULT_CALL (1-based; empty appends are not counted) and FAULT_MODE, one of
#: ``torn`` (the last record of the batch, or the temporary file of a whole-file write, is
#: written half), ``nonewline`` (the batch without its final newline) and ``after`` (the write
#: completes, then the kill). It patches the module before the commands import it.
WRAPPER = """
import os
import signal
import sys
from pathlib import Path

import icon2_lens._files as files

NAME = os.environ["FAULT_FILE"]
CALL = int(os.environ["FAULT_CALL"])
MODE = os.environ["FAULT_MODE"]
calls = 0
real_append, real_write_bytes = files.append_jsonl, files.write_bytes


def hit(path):
    global calls
    if Path(path).name != NAME:
        return False
    calls += 1
    return calls == CALL


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def append_jsonl(path, rows):
    if not rows or not hit(path):
        return real_append(path, rows)
    if MODE == "after":
        real_append(path, rows)
        die()
    data = files._jsonl_text(rows).encode("utf-8")
    last = data[: -1].rsplit(b"\\n", 1)[-1]
    part = data[: len(data) - 1 - len(last) // 2] if MODE == "torn" else data[:-1]
    with open(path, "ab") as f:
        f.write(part)
        f.flush()
        os.fsync(f.fileno())
    die()


def write_bytes(path, data):
    if not hit(path):
        return real_write_bytes(path, data)
    if MODE == "after":
        real_write_bytes(path, data)
        die()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.0.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data[: len(data) // 2])
    die()


files.append_jsonl, files.write_bytes = append_jsonl, write_bytes

from icon2_lens.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def _synthesize(w, out):
    return [
        "synthesize",
        "--model",
        str(w["model"]),
        "--n",
        "6",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(out / "instr.jsonl"),
        "--no-progress",
    ]


def _extract(w, out):
    return [
        "extract",
        "--model",
        str(w["model"]),
        "--criteria",
        "honesty,helpfulness",
        "--n-instructions",
        "4",
        "--n-heldout",
        "2",
        "--batch-size",
        "2",
        "--no-figures",
        "--no-progress",
        "--out",
        str(out),
    ]


def _pairs(w, out):
    return [
        "pairs",
        "--model",
        str(w["model"]),
        "--kept",
        str(w["kept"]),
        "--directions",
        str(w["directions"]),
        "--layers",
        "0-2",
        "--gamma-pos",
        "2.0",
        "--gamma-neg",
        "-2.0",
        "--allow-any-gamma",  # a random tiny model needs strong pushes
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]


def _eval(w, out):
    return [
        "eval",
        "--model",
        str(w["model"]),
        "--system",
        f"other=model:{w['other']}",
        "--instructions",
        str(w["instructions"]),
        "--judges",
        "length,refusal",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]


COMMANDS = {"synthesize": _synthesize, "extract": _extract, "pairs": _pairs, "eval": _eval}


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the hidden temporary files a killed writer leaves."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not _is_temporary(p)
    }


def _reference(world, command: str) -> Path:
    """The outputs of an uninterrupted run (made once per command)."""
    from icon2_lens.cli import main

    if command not in world["refs"]:
        out = world["root"] / f"ref_{command}"
        assert main(COMMANDS[command](world, out)) == 0
        world["refs"][command] = out
    return world["refs"][command]


def _killed(argv: list[str], tmp_path: Path, name: str, call: int, mode: str) -> None:
    wrapper = tmp_path / "killed_writer.py"
    wrapper.write_text(WRAPPER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "FAULT_FILE": name,
        "FAULT_CALL": str(call),
        "FAULT_MODE": mode,
    }
    proc = subprocess.run(
        [sys.executable, str(wrapper), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the write point was not reached (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    )


#: The files written by appending (the others are written whole, atomically).
APPENDED = {"instr.raw.jsonl", "pairs.jsonl", "dropped.jsonl"}


def _check_damage(out: Path, name: str, mode: str) -> None:
    """The kill left what it should: an unterminated line, or a half-written temporary file."""
    target = next(out.rglob(name), None)
    if mode == "after":
        assert target is not None
    elif name in APPENDED:
        data = target.read_bytes()
        assert data and not data.endswith(b"\n")
    else:  # killed inside the atomic writer: the half-written temporary is all there is
        assert any(out.rglob(f".{name}.*.tmp"))


SCENARIOS = [
    # synthesize: the raw file is the resumable one (header, then one append per batch of 2)
    ("synthesize", "instr.raw.jsonl", 1, "torn"),  # the header itself
    ("synthesize", "instr.raw.jsonl", 3, "torn"),  # one sample whole, the next torn
    ("synthesize", "instr.raw.jsonl", 3, "nonewline"),  # a whole batch but its last newline
    ("synthesize", "instr.raw.jsonl", 2, "after"),  # between batches
    ("synthesize", "instr.report.json", 1, "torn"),  # the summary, written last
    # pairs: batches of 2 of 5 instructions; drops are appended before the batch's pairs
    ("pairs", "settings.json", 1, "torn"),
    ("pairs", "pairs.jsonl", 1, "nonewline"),
    ("pairs", "pairs.jsonl", 2, "torn"),  # after the batch's drop was written
    ("pairs", "dropped.jsonl", 2, "after"),
    ("pairs", "summary.json", 1, "torn"),
    # extract: two criteria, each directions, cfg.json, then diagnostics.json (finished)
    ("extract", "directions.safetensors", 2, "torn"),
    ("extract", "cfg.json", 1, "torn"),
    ("extract", "diagnostics.json", 1, "after"),  # between the criteria
    ("extract", "diagnostics.json", 3, "torn"),  # the folder's summary, written last
    # eval: the base, then another model; answers and their settings per system
    ("eval", "base.settings.json", 1, "torn"),
    ("eval", "base.jsonl", 1, "torn"),
    ("eval", "base.jsonl", 1, "after"),  # between the systems
    ("eval", "eval.json", 1, "torn"),
]


@pytest.mark.parametrize(
    "command, name, call, mode", SCENARIOS, ids=[f"{c}-{n}-{k}-{m}" for c, n, k, m in SCENARIOS]
)
def test_a_killed_write_resumes_to_the_bytes_of_an_uninterrupted_run(
    world, tmp_path, command, name, call, mode
):
    from icon2_lens.cli import main

    reference = _files(_reference(world, command))
    out = tmp_path / "out"
    argv = COMMANDS[command](world, out)
    _killed(argv, tmp_path, name, call, mode)
    _check_damage(out, name, mode)
    assert main(argv) == 0
    resumed = _files(out)
    assert sorted(resumed) == sorted(reference)
    for rel, data in reference.items():
        assert resumed[rel] == data, f"{rel} differs from an uninterrupted run"
    left = [p.name for p in out.rglob("*") if p.is_file() and _is_temporary(p)]
    assert all(n.startswith(f".{name}.") for n in left), left  # only the killed write's temporary
