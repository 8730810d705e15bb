"""Direction-set fields from other tools' files: per-block vectors, normalised, their norms kept.

Example:
    >>> import torch
    >>> f = imported_fields(torch.tensor([[3.0, 4.0]]), [5], criterion="x", source="f", source_format="svec")
    >>> f["layers"], f["vectors"].tolist(), f["stats"], f["method"], f["site"]
    ((5,), [[0.6000000238418579, 0.800000011920929]], ({'file_norm': 5.0},), 'imported', 'resid_post')
"""

from collections.abc import Sequence
from typing import Any

import torch

from .vectors import IMPORTED, UNIT_TOLERANCE

__all__ = ["check_widths", "imported_fields"]


def check_widths(source: Any, widths: Sequence[int], d_model: int | None, what: str) -> int:
    """The one width of a file's vectors; refuses mixed widths and a width other than ``d_model``.

    Example:
        >>> check_widths("f", [4, 4], 4, "steering vectors")
        4
    """
    found = sorted(set(widths))
    if len(found) > 1:
        raise ValueError(
            f"{source}: its vectors have different widths {found}; the file is damaged"
        )
    if d_model is not None and found[0] != d_model:
        raise ValueError(
            f"{source} holds vectors of width {found[0]}, the model's residual stream has "
            f"{d_model}: the file was made for another model; use {what} of this model"
        )
    return found[0]


def imported_fields(
    vectors: torch.Tensor,
    layers: Sequence[int],
    *,
    criterion: str,
    source: str,
    source_format: str,
    model_hint: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of a ``resid_post`` set (method ``imported``) from another tool's per-block vectors (normalised; norms kept)."""
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"{source} holds NaN or infinite values; the file is damaged")
    norms = vectors.norm(dim=1)
    zero = [layer for layer, n in zip(layers, norms) if float(n) == 0.0]
    if zero:
        raise ValueError(
            f"{source}: the vectors of layers {zero} are zero; they carry no direction"
        )
    unit = bool(((norms - 1).abs() <= UNIT_TOLERANCE).all())
    if not unit:
        vectors = vectors / norms[:, None]
    meta = {
        "source": source,
        "source_format": source_format,
        "model_hint": None if model_hint is None else str(model_hint),
        "normalized_on_import": not unit,
        **(extra or {}),
    }
    return {
        "criterion": criterion,
        "layers": tuple(int(x) for x in layers),
        "vectors": vectors.to(torch.float32).contiguous(),
        "site": "resid_post",
        "method": IMPORTED,
        "stats": tuple({"file_norm": float(n)} for n in norms),
        "meta": meta,
    }
