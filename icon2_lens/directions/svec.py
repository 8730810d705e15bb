"""Direction sets as IBM activation-steering ``.svec`` files (JSON), both ways.

A ``.svec`` file is one JSON object: ``{"model_type": str, "directions": {"<layer>": [floats]},
"explained_variances": {"<layer>": float}}``, where ``directions[i]`` is added to the output of
decoder layer ``i`` (``blocks.i.hook_resid_post``; a ``resid_pre`` set's block ``L`` is written as
``L - 1``, as for GGUF). Unlike llama.cpp, layer 0 is allowed. Nothing here is ever unpickled.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from icon2_lens.directions.set import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(0, 3), vectors=torch.eye(2, 4), method="mean_diff")
    >>> back = DirectionSet(**read_svec_fields(write_svec(ds, Path(tempfile.mkdtemp()) / "toy.svec")))
    >>> back.hook_names, torch.equal(back.vectors, ds.vectors)
    (['blocks.0.hook_resid_post', 'blocks.3.hook_resid_post'], True)
"""

import json
import math
from pathlib import Path
from typing import Any

import torch

from icon2_lens._files import read_utf8, write_text

from .gguf_io import gguf_index
from .imported import check_widths, imported_fields

__all__ = ["write_svec", "read_svec_fields", "SVEC_SUFFIX"]

SVEC_SUFFIX = ".svec"


def write_svec(ds: Any, path: str | Path, *, model_type: str | None = None) -> Path:
    """Write ``ds``'s unit vectors as a ``.svec`` file (explained variances where recorded, else 0).

    Args:
        ds: A ``resid_post`` or ``resid_pre`` :class:`~icon2_lens.directions.set.DirectionSet`.
        path: The file to write (atomically); ``.svec`` is not appended.
        model_type: The file's ``model_type`` (default: the set's recorded model name).
    """
    index = {layer: gguf_index(layer, ds.site) for layer in ds.layers}
    if any(i < 0 for i in index.values()):
        raise ValueError(
            "blocks.0.hook_resid_pre is the embedding, not a layer's output; leave it out "
            "(DirectionSet.subset) before writing a .svec file"
        )
    variances = [float(s.get("explained_variance", 0.0)) for s in ds.stats] or [0.0] * len(index)
    body = {
        "model_type": model_type or str(ds.meta.get("model_name") or "unknown"),
        "directions": {str(index[layer]): ds[layer].tolist() for layer in ds.layers},
        "explained_variances": {str(index[layer]): v for layer, v in zip(ds.layers, variances)},
    }
    return write_text(path, json.dumps(body))


def _vector(path: Path, key: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{path}: directions[{key!r}] is not a list of numbers; the file is damaged"
        )
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ValueError(
                f"{path}: directions[{key!r}] holds {x!r}, not a finite number; the file is damaged"
            )
    return [float(x) for x in value]


def read_svec_fields(
    path: str | Path, *, criterion: str | None = None, d_model: int | None = None
) -> dict[str, Any]:
    """The :class:`~icon2_lens.directions.set.DirectionSet` fields of a ``.svec`` file.

    A ``resid_post`` set with method ``imported``, named ``criterion`` (default: the file's
    stem), vectors normalised and their norms kept as ``file_norm``
    (:func:`~icon2_lens.directions.exchange.import_directions` builds the set and checks it).

    Raises:
        ValueError: Not JSON, not the ``.svec`` layout, a layer key that is not an integer ≥ 0,
            values that are not finite numbers, mixed widths, or a width other than ``d_model``.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p} does not exist or is not a file; give the path of a .svec file")
    try:
        body = json.loads(read_utf8(p))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{p} is not JSON ({e.msg}, line {e.lineno}); a .svec file is the JSON written by "
            "activation-steering's SteeringVector.save"
        ) from None
    dirs = body.get("directions") if isinstance(body, dict) else None
    if not isinstance(dirs, dict) or not dirs:
        raise ValueError(
            f"{p} has no 'directions' object of layer -> vector; it is not a .svec file"
        )
    rows = {}
    for key, value in dirs.items():
        if not str(key).isdigit():
            raise ValueError(
                f"{p}: layer key {key!r} is not a non-negative integer; the file is damaged"
            )
        rows[int(key)] = _vector(p, key, value)
    check_widths(p, [len(v) for v in rows.values()], d_model, "steering vectors")
    layers = sorted(rows)
    variances = body.get("explained_variances") or {}
    return imported_fields(
        torch.tensor([rows[layer] for layer in layers], dtype=torch.float32),
        layers,
        criterion=criterion or p.stem,
        source=str(p),
        source_format="svec",
        model_hint=body.get("model_type"),
        extra={
            "explained_variances": (
                {str(k): v for k, v in variances.items()} if isinstance(variances, dict) else {}
            )
        },
    )
