"""Low-level file helpers shared by every stage; this module imports nothing of icon2_lens.

* JSON: :func:`write_json` (strict, sorted keys, atomic), :func:`read_json` (errors name the
  file), :func:`read_marker` (a stage's "finished" file, or ``None``).
* JSONL: :func:`write_jsonl` (a whole file, atomic), :func:`append_jsonl` (one batch, fsync'd, for
  incremental writes) and :func:`read_jsonl` (optionally cutting a torn last line).
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
    "write_text",
    "write_jsonl",
    "append_jsonl",
    "read_jsonl",
    "read_utf8",
    "safetensors_bytes",
    "read_saved_config",
    "read_safetensors",
    "settings_differences",
    "check_settings",
]

logger = logging.getLogger(__name__)


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


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: a temporary file beside ``path``, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write strict JSON atomically, sorted keys, UTF-8; NaN and infinite floats become ``null``."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or damaged file raises a ``ValueError`` that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"{path} does not exist; check the path") from e
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}); delete it to start over"
        ) from e


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


def append_jsonl(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append records to a JSONL file and fsync, so a finished batch survives a crash."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(_jsonl_text(rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file (``[]`` if it does not exist).

    Args:
        path: The file.
        repair: Cut a torn last line (an interrupted write) from the file instead of raising.

    Raises:
        ValueError: A malformed line, naming the file and its line number.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    out, good_end, pos = [], 0, 0
    for line_no, line in enumerate(data.split(b"\n"), start=1):
        end = pos + len(line) + 1
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                is_last = end >= len(data)
                if repair and is_last:
                    logger.warning("%s: dropping a torn last line (interrupted write)", path)
                    with open(path, "r+b") as f:
                        f.truncate(good_end)
                    break
                raise ValueError(
                    f"{path}:{line_no}: not valid JSON ({e}); fix that line (each line holds one "
                    "JSON object) or delete the file to start over"
                ) from e
        good_end = min(end, len(data))
        pos = end
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
    re-run with equal settings continues; with different ones this raises a ``ValueError`` that
    names the folder, the differing keys and ``fix``.

    Args:
        path: The settings file (written atomically when missing or equal).
        want: The settings of this run.
        what: What the folder holds, for the message (e.g. ``"pairs"``).
        defaults: Values for keys an older settings file lacks.
        fix: How to proceed, for the message.
    """
    path = Path(path)
    if path.is_file():
        have = {**(defaults or {}), **read_json(path)}
        diff = settings_differences(want, have)
        if diff:
            raise ValueError(
                f"{path.parent} holds {what} written with different settings (differences in: "
                f"{', '.join(diff)}); {fix}"
            )
    write_json(dict(want), path)


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
