"""Uncertainty for small evaluation sets: seeded percentile bootstrap intervals.

Example:
    >>> import numpy as np
    >>> ci = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]), n_boot=200)
    >>> ci.low <= ci.value <= ci.high
    True
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "paired_summary"]


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval.

    Attributes:
        value: The statistic on the full sample.
        low: Lower end of the interval.
        high: Upper end.
        n: Sample size.
        level: Coverage (0.95 for a 95 % interval).
    """

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "level": self.level,
        }

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def bootstrap_ci(
    values: np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``stat`` over the rows of ``values`` (resampled together).

    Args:
        values: ``[n]`` or ``[n, k]``; rows are resampled with replacement.
        stat: Maps a resampled array to a number.
        n_boot: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling (the same inputs give the same interval).

    Raises:
        ValueError: Empty ``values`` or a level outside (0, 1).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] == 0:
        raise ValueError("no values to bootstrap")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    draws = np.array([stat(values[rng.integers(0, n, n)]) for _ in range(n_boot)])
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(stat(values)), float(low), float(high), n, level)


def paired_summary(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """How a paired sample ``a`` compares with ``b``: mean gap, win rate and tie rate, each with a CI.

    The win rate counts a tie as half a win (so 0.5 means no difference either way).

    Example:
        >>> out = paired_summary(np.array([2.0, 3.0, 1.0]), np.array([1.0, 1.0, 1.0]), seed=0)
        >>> out["mean_gap"]["value"], round(out["win_rate"]["value"], 3)
        (1.0, 0.833)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    gap = a - b
    score = (gap > 0) + 0.5 * (gap == 0)
    return {
        "mean_gap": bootstrap_ci(gap, seed=seed).to_dict(),
        "win_rate": bootstrap_ci(score, seed=seed).to_dict(),
        "tie_rate": bootstrap_ci((gap == 0).astype(float), seed=seed).to_dict(),
    }
