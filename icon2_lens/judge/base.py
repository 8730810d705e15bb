"""What every judge is: a pointwise or a pairwise protocol, each saying what it reads.

Pointwise judges have ``score(instructions, responses)``: ``[n]`` float64, higher = better, NaN
where unscorable. Pairwise judges have ``prefer(instructions, responses_a, responses_b)``: ``[n]``
in ``[0, 1]`` (1: ``a`` is better, 0: ``b``, 0.5: a tie). Both carry a ``name`` and a
``description`` of what they read, so every number in a table can be read next to it.
"""

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from jaxtyping import Float

__all__ = ["PointwiseJudge", "PairwiseJudge", "Scores", "check_lengths"]

Scores = Float[np.ndarray, " n"]


@runtime_checkable
class PointwiseJudge(Protocol):
    """Scores each response on its own: ``[n]`` float64, higher = better, NaN where unscorable."""

    name: str
    description: str
    kind: Literal["pointwise"]

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    """Compares two responses to one instruction: ``[n]`` in [0, 1], 1 = ``a`` better, 0.5 = tie."""

    name: str
    description: str
    kind: Literal["pairwise"]

    def prefer(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray: ...


def check_lengths(*seqs: Sequence[str]) -> int:
    """The common length of ``seqs``; a ``ValueError`` if they differ."""
    n = len(seqs[0])
    if any(len(s) != n for s in seqs):
        raise ValueError(
            f"instructions and responses must have the same length, got {[len(s) for s in seqs]}"
        )
    return n
