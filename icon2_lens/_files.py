"""Low-level file helpers shared by every stage; this module imports nothing of icon2_lens.

* Whole files: :func:`write_bytes` is the one atomic writer (a temporary file unique to the
  process, fsync'd, renamed over the target); :func:`write_text`, :func:`write_json` (strict,
  sorted keys) and :func:`write_jsonl` go through it, so a reader never sees half a file.
* JSON: :func:`read_json` (errors name the file and the fix), :func:`read_marker` (a stage's
  "finished" file, or ``None``).
* JSONL: :func:`append_jsonl` (one batch, fsync'd, for incremental writes; it refuses a file that
  does not end at a record boundary) and :func:`read_jsonl` (with ``repair``, it leaves the file
  ending at a record boundary: see its docstring).
* safetensors: :func:`safetensors_bytes` (a canonical header, so equal inputs give equal bytes) and
  :func:`read_saved_config` (locate a saved safetensors + JSON folder and check its format).
* Resume: :func:`settings_differences` and :func:`check_settings`, the one rule every resumable
  output uses to refuse continuing with other settings.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> write_jsonl(path, [{"a": 1}, {"a": float("nan")}])
    >>> read_jsonl(path)
    [{'a': 1}, {'a': None}]
"""

import itertools
import json
import logging
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "json_safe",
    "write_json",
    "read_json",
    "read_marker",
    "write_bytes",
    "write_text",
    "write_jsonl",
    "append_jsonl",
    "read_jsonl",
    "read_utf8",
    "check_writable",
    "safetensors_bytes",
    "read_saved_config",
    "read_safetensors",
    "settings_differences",
    "check_settings",
]

logger = logging.getLogger(__name__)

_TMP_COUNTER = itertools.count()


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities (not valid JSON) replaced by ``None``, recursively.

    Example:
        >>> json_safe({"x": [1.0, float("inf")]})
        {'x': [1.0, None]}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every file system lets a directory be fsync'd)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically: a temporary file beside ``path``, fsync'd, then renamed over it.

    The temporary file (``.<name>.<pid>.<n>.tmp``) is unique to the process and the call, so two
    writers never share one; a process killed while writing leaves ``path`` as it was (absent or
    the previous version) and at most that hidden temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TMP_COUNTER)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically with :func:`write_bytes`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(obj: Any, path: str | Path) -> Path:
    """Write strict JSON atomically, sorted keys, UTF-8; NaN and infinite floats become ``null``."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return write_text(path, text + "\n")


def read_json(path: str | Path, *, fix: str = "delete it to start over") -> Any:
    """Parse a JSON file; a missing or damaged file raises a ``ValueError`` that names it.

    Args:
        path: The file.
        fix: How to proceed when the file is damaged (empty, cut short, not UTF-8), for the message.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> empty = Path(tempfile.mkdtemp()) / "settings.json"
        >>> _ = empty.write_text("")
        >>> try:
        ...     read_json(empty)
        ... except ValueError as e:
        ...     print(str(e) == f"{empty} is not valid JSON (Expecting value, line 1); delete it to start over")
        True
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"{path} does not exist; check the path") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); {fix}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); {fix}") from e


def read_marker(path: str | Path) -> Any:
    """The contents of a stage's "finished" JSON file, or ``None`` if the stage has not finished."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


def _jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(
        json.dumps(json_safe(dict(r)), ensure_ascii=False, allow_nan=False) + "\n" for r in rows
    )


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write records as a whole JSONL file, atomically (a reader never sees half a file)."""
    write_text(path, _jsonl_text(rows))


def _check_boundary(fd: int, path: Path) -> None:
    """Raise unless the open file ``fd`` is empty or ends with a newline (a record boundary)."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        raise ValueError(
            f"{path} does not end with a newline (an interrupted write left its last line "
            "unterminated), so nothing was appended; run the command again to repair it "
            "(read_jsonl(..., repair=True)) or delete the file"
        )


def append_jsonl(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append records to a JSONL file and fsync, so a finished batch survives a crash.

    Every record is one line ending in ``\\n``. A file that does not end with a newline is
    refused (``ValueError``) instead of having a record glued onto its last line;
    :func:`read_jsonl` with ``repair=True`` makes such a file appendable again.
    """
    if not rows:
        return
    path = Path(path)
    data = _jsonl_text(rows).encode("utf-8")
    with open(path, "a+b") as f:  # readable too, to check the last byte
        _check_boundary(f.fileno(), path)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _parse_line(path: Path, line_no: int, line: bytes) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path}:{line_no}: not valid JSON ({e}); fix that line (each line holds one "
            "JSON object) or delete the file to start over"
        ) from e


def _complete_record(line: bytes) -> dict[str, Any] | None:
    """The record an unterminated last line holds, or ``None`` if it is torn.

    A JSON object cannot be cut short and still parse as an object, so a line that parses as
    one is a whole record that only lost its newline.
    """
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _repair_tail(path: Path, size: int, tail: bytes) -> dict[str, Any] | None:
    """End ``path`` (``size`` bytes, the last ``tail`` of them unterminated) at a record boundary."""
    record = _complete_record(tail)
    with open(path, "r+b") as f:
        if record is not None:
            logger.warning(
                "%s: the last record lacked its newline (interrupted write); added it", path
            )
            f.seek(size)
            f.write(b"\n")
        else:
            logger.warning("%s: dropping a torn last line (interrupted write)", path)
            f.truncate(size - len(tail))
        f.flush()
        os.fsync(f.fileno())
    return record


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file (``[]`` if it does not exist).

    Every record of a file this module writes ends with a newline, so only the last line can be
    unterminated, by a write that was interrupted. With ``repair=True`` the file is left ending at
    a record boundary, so the next :func:`append_jsonl` starts a new line:

    * an unterminated last line that parses as a JSON object is a complete record that lost only
      its newline: it is kept and the newline is added;
    * any other unterminated last line (a torn record, or blanks) is cut from the file.

    Without ``repair`` the file is not changed: an unterminated last line is read if it parses
    (hand-written files often lack the final newline) and raises otherwise.

    Args:
        path: The file.
        repair: Repair the last line as above instead of raising.

    Raises:
        ValueError: A malformed line, naming the file and its line number.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = path.write_bytes(b'{"a": 1}\\n{"a": 2}')
        >>> read_jsonl(path, repair=True), path.read_bytes()
        ([{'a': 1}, {'a': 2}], b'{"a": 1}\\n{"a": 2}\\n')
        >>> _ = path.write_bytes(b'{"a": 1}\\n{"a"')
        >>> read_jsonl(path, repair=True), path.read_bytes()
        ([{'a': 1}], b'{"a": 1}\\n')
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # tail: what follows the last newline (b"" if none)
    out = [_parse_line(path, n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not tail:
        return out
    if repair:
        record = _repair_tail(path, len(data), tail)
        return out + ([record] if record is not None else [])
    if tail.strip():
        out.append(_parse_line(path, len(lines) + 1, tail))
    return out


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bytes:
    """Serialise float32 tensors in the safetensors layout with a canonical (sorted) header.

    ``safetensors.save_file`` orders the metadata block arbitrarily, so two saves of the same
    tensors could differ byte-wise; writing the documented layout here keeps files reproducible.
    Layout: 8-byte little-endian header size, JSON header (padded with spaces to a multiple of
    8 bytes), then the raw little-endian data in header order.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        data = t.numpy().astype("<f4", copy=False).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def read_saved_config(
    path: str | Path,
    *,
    cfg_file: str,
    weights_file: str,
    fmt: str,
    version: int,
    what: str,
    fix: str,
    missing_hint: str = "",
) -> tuple[Path, Path, dict[str, Any]]:
    """Locate a saved folder's JSON config and safetensors file and check the config's format.

    ``path`` is the folder or one of its two files. Returns ``(cfg_path, weights_path, cfg)``.

    Raises:
        ValueError: A missing file, invalid JSON, another ``format`` or ``format_version``; the
            messages name ``what`` was expected and end with ``fix`` (how to make a readable one).
    """
    p = Path(path)
    if p.is_file():
        p = p.parent
    cfg_path, weights_path = p / cfg_file, p / weights_file
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ValueError(
            f"{str(p)!r} is not a saved {what}: it needs {cfg_file} and {weights_file}{missing_hint}"
        )
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object; the file is damaged. {fix}"
        )
    if cfg.get("format") != fmt:
        raise ValueError(f"{cfg_path} is not an icon2_lens {what} (format={cfg.get('format')!r})")
    if cfg.get("format_version") != version:
        raise ValueError(
            f"{cfg_path} has format_version {cfg.get('format_version')!r}; this icon2_lens reads "
            f"version {version}. {fix}"
        )
    return cfg_path, weights_path, cfg


def read_safetensors(
    path: str | Path, names: Sequence[str], *, expected: str = ""
) -> tuple[dict[str, Any], dict[str, str]]:
    """The float32 tensors ``names`` of a safetensors file and its header metadata (nothing is unpickled).

    Raises:
        ValueError: The file holds other tensors than ``names`` (``expected`` says where the list
            comes from), or it cannot be read (damaged, not safetensors).
    """
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = sorted(f.keys())
            if set(keys) != set(names):
                raise ValueError(
                    f"{path} holds {keys} but {expected or 'the format'} lists {sorted(names)}"
                )
            return {n: f.get_tensor(n).to(torch.float32) for n in names}, dict(f.metadata() or {})
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error type on damaged files
        raise ValueError(f"cannot read {path}: {e}; the file is damaged, write it again") from e


def _plain(obj: Any) -> Any:
    """Tuples as lists, NaN as ``None``: the form a value takes once written as JSON and read back."""
    return json.loads(json.dumps(json_safe(obj)))


def settings_differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    """Top-level keys whose values differ between two settings documents (compared as JSON).

    Example:
        >>> settings_differences({"a": (1, 2), "b": 1}, {"a": [1, 2], "b": 2, "c": 0})
        ['b', 'c']
    """
    want, have = _plain(dict(want)), _plain(dict(have))
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


def _settings_fix(path: Path, what: str) -> str:
    return (
        f"it records what made the {what} in {path.parent}: delete it only if you resume with "
        f"the settings they were made with, else delete {path.parent} to start over"
    )


def check_settings(
    path: str | Path,
    want: Mapping[str, Any],
    *,
    what: str,
    defaults: Mapping[str, Any] | None = None,
    fix: str = "choose another output directory or delete it to start over",
) -> None:
    """Refuse to resume onto an output whose recorded settings differ; record them if new.

    Every resumable output of icon2-lens records what made it in a settings file beside it. A
    re-run with equal settings continues without writing; with different ones this raises a
    ``ValueError`` that names the folder, the differing keys and ``fix``. The file is written
    (atomically) only when it is absent, so a re-run never rewrites it in place.

    Args:
        path: The settings file.
        want: The settings of this run.
        what: What the folder holds, for the message (e.g. ``"pairs"``).
        defaults: Values for keys an older settings file lacks.
        fix: How to proceed, for the message.

    Raises:
        ValueError: Other settings, or a damaged settings file (naming it and the fix).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "settings.json"
        >>> check_settings(path, {"seed": 1}, what="pairs")  # absent: recorded
        >>> check_settings(path, {"seed": 1}, what="pairs")  # equal: continues, nothing written
        >>> try:
        ...     check_settings(path, {"seed": 2}, what="pairs")
        ... except ValueError as e:
        ...     print(str(e).split("(", 1)[1])
        differences in: seed); choose another output directory or delete it to start over
    """
    path = Path(path)
    if not path.is_file():
        write_json(dict(want), path)
        return
    have = read_json(path, fix=_settings_fix(path, what))
    if not isinstance(have, dict):
        raise ValueError(
            f"{path} does not hold a settings object (found {type(have).__name__}); "
            + _settings_fix(path, what)
        )
    diff = settings_differences(want, {**(defaults or {}), **have})
    if diff:
        raise ValueError(
            f"{path.parent} holds {what} written with different settings (differences in: "
            f"{', '.join(diff)}); {fix}"
        )


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file; one that is not UTF-8 raises a ``ValueError`` naming the file.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.txt"
        >>> _ = p.write_bytes(b"caf\\xe9")
        >>> read_utf8(p)
        Traceback (most recent call last):
        ...
        ValueError: .../x.txt is not UTF-8 text (byte 3 cannot be decoded); save it as UTF-8
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8"
        ) from None


def check_writable(path: str | Path, *, flag: str = "the output") -> None:
    """Raise a ``ValueError`` unless ``path`` (a folder or file to be written) can be created there.

    Checked before any work: the nearest existing folder on the way must be a folder (not a file)
    and writable.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "a_file"
        >>> _ = f.write_text("")
        >>> check_writable(f / "out", flag="--out")
        Traceback (most recent call last):
        ...
        ValueError: --out .../a_file/out lies below the file .../a_file; pass a directory
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path} lies below the file {parent}; pass a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(
                    f"{flag} {path}: {parent} is not writable; choose a folder you can write to"
                )
            return
