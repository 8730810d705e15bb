"""Save and load direction sets: a directory with ``directions.safetensors`` and ``cfg.json``.

``directions.safetensors`` holds one float32 unit vector per layer, keyed by the TransformerLens
hook name (``blocks.12.hook_resid_post``); its header repeats the identifying fields so a lone file
still says what it is. ``cfg.json`` holds everything else (sorted keys, no timestamps, so the
same inputs give byte-identical files). Nothing is ever unpickled.

Example:
    >>> import tempfile, torch
    >>> from icon2_lens.directions import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(0, 2), vectors=torch.eye(2, 4), method="mean_diff")
    >>> path = save_direction_set(ds, tempfile.mkdtemp())
    >>> torch.equal(load_direction_set(path).vectors, ds.vectors)
    True
"""

import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .directions import SIGN_CONVENTION, DirectionSet
from .hooks import resid_hook_name

__all__ = ["FORMAT", "FORMAT_VERSION", "save_direction_set", "load_direction_set", "write_json"]

logger = logging.getLogger(__name__)

FORMAT = "icon2_lens.directions"
FORMAT_VERSION = 1
WEIGHTS_FILE = "directions.safetensors"
CFG_FILE = "cfg.json"


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by ``None``, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write strict JSON atomically (temporary file, then rename), sorted keys, UTF-8.

    NaN and infinite floats are written as ``null``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise float32 tensors in the safetensors layout with a canonical (sorted) header.

    ``safetensors.save_file`` orders the metadata block arbitrarily, so two saves of the same set
    could differ byte-wise; writing the documented layout ourselves keeps files reproducible.
    Layout: 8-byte little-endian header size, JSON header (padded with spaces to a multiple of
    8 bytes), then the raw little-endian data in header order.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        data = t.numpy().astype("<f4", copy=False).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def save_direction_set(ds: DirectionSet, path: str | Path) -> Path:
    """Write ``ds`` into directory ``path`` (created if needed) and return the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: ds.vectors[i].detach().to("cpu", torch.float32).contiguous().clone()
               for i, name in enumerate(ds.hook_names)}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "criterion": ds.criterion,
        "model_name": str(ds.meta.get("model_name", "")),
        "site": ds.site,
        "method": ds.method,
    }
    tmp = out / (WEIGHTS_FILE + ".tmp")
    tmp.write_bytes(_safetensors_bytes(tensors, header))
    tmp.replace(out / WEIGHTS_FILE)
    cfg = {
        **dict(ds.meta),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "criterion": ds.criterion,
        "site": ds.site,
        "method": ds.method,
        "layers": list(ds.layers),
        "hook_names": ds.hook_names,
        "d_model": ds.d_model,
        "normalized": True,
        "sign_convention": SIGN_CONVENTION,
        "per_layer": {name: dict(s) for name, s in zip(ds.hook_names, ds.stats)},
    }
    write_json(cfg, out / CFG_FILE)
    return out


def read_saved_config(
    path: str | Path, *, cfg_file: str, weights_file: str, fmt: str, version: int, what: str, fix: str,
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
        raise ValueError(f"{str(p)!r} is not a saved {what}: it needs {cfg_file} and {weights_file}{missing_hint}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    if cfg.get("format") != fmt:
        raise ValueError(f"{cfg_path} is not an icon2_lens {what} (format={cfg.get('format')!r})")
    if cfg.get("format_version") != version:
        raise ValueError(
            f"{cfg_path} has format_version {cfg.get('format_version')!r}; this icon2_lens reads "
            f"version {version}. {fix}"
        )
    return cfg_path, weights_path, cfg


def load_direction_set(
    path: str | Path, *, model: Any = None, check_fingerprint: bool = True
) -> DirectionSet:
    """Read a direction set written by :func:`save_direction_set`.

    Args:
        path: The directory (or its ``cfg.json`` / ``directions.safetensors``).
        model: If given, the set must fit it: same width, layers in range and, unless
            ``check_fingerprint=False``, bit-identical weights.
        check_fingerprint: Compare the recorded weight fingerprint with ``model``'s.

    Raises:
        ValueError: Missing files, another format or version, inconsistent contents, or a set
            extracted from another model or width.
    """
    cfg_path, weights_path, cfg = read_saved_config(
        path, cfg_file=CFG_FILE, weights_file=WEIGHTS_FILE, fmt=FORMAT, version=FORMAT_VERSION,
        what="direction set", fix="Re-extract the directions with this version.")
    missing = [k for k in ("site", "layers", "criterion", "method", "d_model") if k not in cfg]
    if missing:
        raise ValueError(f"{cfg_path} lacks {', '.join(missing)}; the file is incomplete or damaged")
    site, layers = cfg["site"], [int(x) for x in cfg["layers"]]
    names = [resid_hook_name(layer, site) for layer in layers]
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            keys = set(f.keys())
            header = f.metadata() or {}
            if keys != set(names):
                raise ValueError(f"{weights_path} holds {sorted(keys)} but {CFG_FILE} lists {names}")
            vectors = torch.stack([f.get_tensor(n).to(torch.float32) for n in names])
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error type on damaged files
        raise ValueError(f"cannot read {weights_path}: {e}") from e
    for key in ("criterion", "site", "method"):
        if key in header and header[key] != str(cfg[key]):
            raise ValueError(
                f"{weights_path} says {key}={header[key]!r} but {CFG_FILE} says {cfg[key]!r}: "
                "the two files come from different direction sets"
            )
    if vectors.shape[1] != cfg["d_model"]:
        raise ValueError(f"{weights_path}: vectors have width {vectors.shape[1]}, cfg says {cfg['d_model']}")
    per_layer = cfg.get("per_layer", {})
    stats = tuple(per_layer[n] for n in names) if per_layer else ()
    skip = {"format", "format_version", "criterion", "site", "method", "layers", "hook_names",
            "d_model", "normalized", "sign_convention", "per_layer"}
    meta = {k: v for k, v in cfg.items() if k not in skip}
    ds = DirectionSet(criterion=cfg["criterion"], layers=tuple(layers), vectors=vectors, site=site,
                      method=cfg["method"], stats=stats, meta=meta)
    if model is not None:
        check_compatible(ds, model, check_fingerprint=check_fingerprint, source=str(cfg_path.parent))
    return ds


def check_compatible(ds: DirectionSet, model: Any, *, check_fingerprint: bool = True, source: str = "") -> None:
    """Raise a ``ValueError`` unless ``ds`` can be used with ``model``."""
    from .models import model_fingerprint

    where = f" ({source})" if source else ""
    d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
    if ds.d_model != d_model:
        raise ValueError(
            f"direction set{where} has width {ds.d_model} (model {ds.meta.get('model_name')!r}) but this "
            f"model's d_model is {d_model}; extract directions for this model with 'icon2-lens extract'"
        )
    if ds.layers and max(ds.layers) >= n_layers:
        raise ValueError(
            f"direction set{where} has layer {max(ds.layers)} but this model has {n_layers} layers "
            f"(0..{n_layers - 1}); it was extracted from {ds.meta.get('model_name')!r}"
        )
    recorded = ds.meta.get("model_fingerprint")
    if check_fingerprint and recorded:
        actual = model_fingerprint(model)
        if actual != recorded:
            raise ValueError(
                f"direction set{where} was extracted from model {ds.meta.get('model_name')!r} "
                f"(weights fingerprint {recorded}) but this model's weights differ (fingerprint "
                f"{actual}); re-extract for this model, or pass check_fingerprint=False if you "
                "really mean to transfer it"
            )


def load_extraction(
    path: str | Path, *, model: Any = None, criteria: list[str] | None = None
) -> tuple[dict[str, DirectionSet], dict[str, list[int]]]:
    """Direction sets and recommended control intervals from an ``icon2-lens extract`` directory.

    Args:
        path: The extraction output directory (one sub-directory per criterion).
        model: If given, every set is checked against it (width, layers, weight fingerprint).
        criteria: Criteria to load (default: every finished one).

    Returns:
        ``(sets, intervals)``: criterion -> :class:`DirectionSet`, criterion -> interval layers.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: pass the output directory of 'icon2-lens extract'")
    found = sorted(p.parent.name for p in root.glob("*/diagnostics.json"))
    names = list(criteria) if criteria else found
    missing = [c for c in names if c not in found]
    if missing or not names:
        raise ValueError(
            f"{root} holds no finished extraction for {missing or 'any criterion'} "
            f"(found: {found or 'none'}); run 'icon2-lens extract --out {root}' first"
        )
    sets, intervals = {}, {}
    for name in names:
        sets[name] = load_direction_set(root / name, model=model)
        lo, hi = json.loads((root / name / "diagnostics.json").read_text(encoding="utf-8"))["interval"]
        intervals[name] = list(range(int(lo), int(hi) + 1))
    return sets, intervals


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file; with ``repair``, cut a torn last line (an interrupted write) from the file."""
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
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from e
        good_end = min(end, len(data))
        pos = end
    return out


def append_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append records to a JSONL file and fsync, so a finished batch survives a crash."""
    if not rows:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
