"""Win rates of system ``a`` over system ``b`` under one judge, raw and length-controlled.

Each item gets an outcome in ``[0, 1]``: for a pointwise judge 1 if ``a`` scores higher, 0.5 on
a tie, 0 if ``b`` does; for a pairwise judge its preference probability. The **win rate** is the
mean outcome (0.5 = no difference).

Judges, the model's own ones included, tend to prefer longer answers, and steering can change
the length of what a model writes. The **length-controlled (LC) win rate**, in the spirit of
AlpacaEval's, asks what the win rate would be between equally long responses: a logistic
regression

    P(a wins) = σ(θ₀ + θ₁ · tanh((len_a − len_b) / sd))

is fitted to the outcomes (``sd`` is the standard deviation of the length differences; they are
not centred, so 0 means "equally long" and the bounded ``tanh`` keeps a few very long answers
from dominating), and the LC win rate is ``σ(θ₀)``, the prediction with the length term at zero.
Soft outcomes (ties, probabilities) are cross-entropy targets, which is the same as entering each
item as a row with target 1 and weight ``p`` plus a row with target 0 and weight ``1 − p``. The
slope has a small L2 penalty (``l2``), the intercept none, so when length explains nothing the LC
win rate equals the raw one. Degenerate cases fall back to the raw win rate, since there is no
length effect to remove: every outcome equal (the fit would diverge), or no spread in the
length differences (the length term is then constant and cannot be told apart from the intercept).

Both rates get a seeded percentile bootstrap interval over the same item resamples; the LC fit is
redone on every resample, all resamples at once (a batched Newton solver), so a few thousand cost
well under a second.

Example:
    >>> import numpy as np
    >>> outcomes = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    >>> longer_a = np.array([5.0, 4.0, 6.0, -5.0, 3.0, -4.0])  # a wins exactly when it is longer
    >>> raw = outcomes.mean()
    >>> lc = length_controlled_win_rate(outcomes, longer_a, np.zeros(6))
    >>> bool(abs(lc - 0.5) < abs(raw - 0.5))
    True
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from jaxtyping import Float

from .stats import Interval

__all__ = [
    "Comparison",
    "length_controlled_win_rate",
    "compare_pointwise",
    "compare_pairwise",
    "compare_systems",
    "response_lengths",
    "score_once",
]

log = logging.getLogger(__name__)

#: Outcomes within this distance of 0.5 count as ties.
TIE_TOLERANCE = 1e-9


@dataclass
class Comparison:
    """How system ``a`` fares against system ``b`` under one judge.

    Attributes:
        judge: The judge's name.
        description: What the judge reads and what higher means.
        n: Items compared (after dropping the unscorable ones).
        win_rate: Mean outcome (ties count half) with its bootstrap interval.
        lc_win_rate: Length-controlled win rate with its bootstrap interval.
        tie_rate: Share of items with outcome 0.5.
        mean_length_a: Mean length of ``a``'s responses over the compared items.
        mean_length_b: Same for ``b``.
        outcomes: ``[n]`` per-item outcomes in ``[0, 1]`` (1 = ``a`` better).
        n_dropped: Items dropped because the judge could not score one of the two responses.
        notes: Judge diagnostics (``position_bias`` of a pairwise self-judge, ``label_mass``...).
    """

    judge: str
    description: str
    n: int
    win_rate: Interval
    lc_win_rate: Interval
    tie_rate: float
    mean_length_a: float
    mean_length_b: float
    outcomes: Float[np.ndarray, " n"]
    n_dropped: int = 0
    notes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-item outcomes)."""
        return {
            "judge": self.judge,
            "description": self.description,
            "n": self.n,
            "n_dropped": self.n_dropped,
            "win_rate": self.win_rate.to_dict(),
            "lc_win_rate": self.lc_win_rate.to_dict(),
            "tie_rate": self.tie_rate,
            "mean_length_a": self.mean_length_a,
            "mean_length_b": self.mean_length_b,
            "notes": {k: float(v) for k, v in self.notes.items()},
        }

    def __str__(self) -> str:
        return f"{self.judge}: win {self.win_rate}, LC {self.lc_win_rate}, ties {self.tie_rate:.2f}"


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _lc_batch(
    y: Float[np.ndarray, "b n"], diff: Float[np.ndarray, "b n"], l2: float, max_iter: int = 100
) -> Float[np.ndarray, " b"]:
    """LC win rate of each row of ``(y, diff)``: damped Newton on the penalised cross-entropy."""
    out = y.mean(axis=1)
    sd = diff.std(axis=1)
    fit = (np.ptp(y, axis=1) > 1e-12) & (sd > 1e-9 * np.maximum(1.0, np.abs(diff).max(axis=1)))
    if not fit.any():
        return out
    y = y[fit]
    x = np.tanh(diff[fit] / sd[fit, None])
    m = y.mean(axis=1)
    a = np.log(m / (1 - m))  # the intercept-only optimum; y is not constant, so 0 < m < 1
    b = np.zeros_like(a)

    def loss(a, b):
        z = a[:, None] + b[:, None] * x
        return (_softplus(z) - y * z).sum(axis=1) + 0.5 * l2 * b**2

    current = loss(a, b)
    for _ in range(max_iter):
        p = _sigmoid(a[:, None] + b[:, None] * x)
        r, w = p - y, p * (1 - p)
        ga, gb = r.sum(axis=1), (r * x).sum(axis=1) + l2 * b
        haa, hab, hbb = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1) + l2
        det = np.maximum(haa * hbb - hab**2, 1e-300)
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        shrink = np.minimum(1.0, 10.0 / np.maximum(np.abs(da), np.abs(db)).clip(min=1e-300))
        step = shrink.copy()
        for _ in range(30):  # backtrack each row until its loss does not increase
            trial = loss(a - step * da, b - step * db)
            worse = trial > current + 1e-12 * np.abs(current)
            if not worse.any():
                break
            step = np.where(worse, step / 2, step)
        a, b, current = a - step * da, b - step * db, np.minimum(current, trial)
        if np.max(np.abs(step * da) + np.abs(step * db)) < 1e-10:
            break
    out[fit] = _sigmoid(a)
    return out


def length_controlled_win_rate(
    outcomes: npt.ArrayLike, length_a: npt.ArrayLike, length_b: npt.ArrayLike, *, l2: float = 1.0
) -> float:
    """The win rate predicted for equally long responses (see the module docstring).

    Args:
        outcomes: ``[n]`` outcomes in ``[0, 1]`` (1 = ``a`` better, 0.5 = tie).
        length_a: ``[n]`` lengths of ``a``'s responses (tokens or words).
        length_b: ``[n]`` lengths of ``b``'s responses.
        l2: L2 penalty on the length slope (the intercept is not penalised).

    Returns:
        ``σ(θ₀)``; the raw win rate when every outcome is equal or the length differences do not vary.

    Example:
        >>> length_controlled_win_rate([1.0, 1.0, 1.0], [1, 2, 3], [0, 0, 0])
        1.0
        >>> length_controlled_win_rate([1.0, 0.0, 0.5, 1.0], [4, 4, 4, 4], [2, 2, 2, 2])
        0.625
    """
    y, d = _prepare(outcomes, length_a, length_b)
    if y.size == 0:
        raise ValueError("no outcomes")
    return float(_lc_batch(y[None], d[None], l2)[0])


def _prepare(outcomes, length_a, length_b) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(outcomes, dtype=np.float64).ravel()
    la, lb = (
        np.asarray(length_a, dtype=np.float64).ravel(),
        np.asarray(length_b, dtype=np.float64).ravel(),
    )
    if not (y.shape == la.shape == lb.shape):
        raise ValueError(f"outcomes and lengths differ in size: {y.size}, {la.size}, {lb.size}")
    if np.any((y < 0) | (y > 1)) or np.isnan(y).any():
        raise ValueError("outcomes must lie in [0, 1]")
    return y, la - lb


def _summarise(
    outcomes: np.ndarray,
    la: np.ndarray,
    lb: np.ndarray,
    keep: np.ndarray,
    *,
    judge_name: str,
    description: str,
    seed: int,
    n_boot: int,
    l2: float,
    level: float = 0.95,
) -> Comparison:
    dropped = int((~keep).sum())
    y, la, lb = outcomes[keep], la[keep], lb[keep]
    n = y.size
    if n == 0:
        raise ValueError(
            f"no item left to compare under the {judge_name!r} judge ({dropped} unscorable)"
        )
    if dropped:
        log.info("%s: %d of %d items dropped (unscorable)", judge_name, dropped, n + dropped)
    y, d = _prepare(y, la, lb)
    rng = np.random.default_rng(seed)
    wins, lcs = np.empty(n_boot), np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, (min(chunk, n_boot - start), n))
        wins[start : start + len(idx)] = y[idx].mean(axis=1)
        lcs[start : start + len(idx)] = _lc_batch(y[idx], d[idx], l2)
    tail = (1 - level) / 2

    def interval(value: float, draws: np.ndarray) -> Interval:
        low, high = np.quantile(draws, [tail, 1 - tail])
        return Interval(float(value), float(low), float(high), n, level)

    return Comparison(
        judge=judge_name,
        description=description,
        n=n,
        win_rate=interval(y.mean(), wins),
        lc_win_rate=interval(_lc_batch(y[None], d[None], l2)[0], lcs),
        tie_rate=float(np.isclose(y, 0.5, rtol=0, atol=TIE_TOLERANCE).mean()),
        mean_length_a=float(la.mean()),
        mean_length_b=float(lb.mean()),
        outcomes=y,
        n_dropped=dropped,
    )


def _as_float(x: npt.ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    out = np.asarray(x, dtype=np.float64).ravel()
    if n is not None and out.size != n:
        raise ValueError(f"{name} has {out.size} entries, expected {n}")
    return out


def compare_pointwise(
    scores_a: npt.ArrayLike,
    scores_b: npt.ArrayLike,
    *,
    lengths_a: npt.ArrayLike,
    lengths_b: npt.ArrayLike,
    judge_name: str,
    description: str = "",
    seed: int = 0,
    n_boot: int = 2000,
    l2: float = 1.0,
) -> Comparison:
    """Compare two systems from a pointwise judge's scores of their responses to the same items.

    The outcome is 1 where ``a`` scores higher, 0.5 on equal scores, 0 where ``b`` does. Items
    where either score is NaN are dropped (counted in ``n_dropped``, not in ``n``).

    Args:
        scores_a: ``[n]`` scores of ``a``'s responses.
        scores_b: ``[n]`` scores of ``b``'s responses to the same instructions.
        lengths_a: ``[n]`` lengths of ``a``'s responses.
        lengths_b: ``[n]`` lengths of ``b``'s responses.
        judge_name: Recorded in the result.
        description: Recorded in the result.
        seed: Seed of the bootstrap.
        n_boot: Bootstrap resamples.
        l2: L2 penalty on the length slope (see :func:`length_controlled_win_rate`).

    Example:
        >>> c = compare_pointwise([2.0, 1.0, np.nan], [1.0, 1.0, 0.0], lengths_a=[3, 3, 3],
        ...                       lengths_b=[3, 3, 3], judge_name="toy", n_boot=100)
        >>> c.n, c.n_dropped, c.win_rate.value, c.tie_rate
        (2, 1, 0.75, 0.5)
    """
    a = _as_float(scores_a, "scores_a")
    b = _as_float(scores_b, "scores_b", a.size)
    la, lb = _as_float(lengths_a, "lengths_a", a.size), _as_float(lengths_b, "lengths_b", a.size)
    keep = ~(np.isnan(a) | np.isnan(b))
    outcomes = np.where(keep, (a > b) + 0.5 * (a == b), 0.5)
    return _summarise(
        outcomes,
        la,
        lb,
        keep,
        judge_name=judge_name,
        description=description,
        seed=seed,
        n_boot=n_boot,
        l2=l2,
    )


def compare_pairwise(
    prefs: npt.ArrayLike,
    *,
    lengths_a: npt.ArrayLike,
    lengths_b: npt.ArrayLike,
    judge_name: str,
    description: str = "",
    seed: int = 0,
    n_boot: int = 2000,
    l2: float = 1.0,
) -> Comparison:
    """Compare two systems from a pairwise judge's preferences (1 = ``a`` better); NaN items dropped.

    Example:
        >>> c = compare_pairwise([0.9, 0.5, 0.7], lengths_a=[1, 2, 3], lengths_b=[1, 2, 3],
        ...                      judge_name="toy", n_boot=100)
        >>> round(c.win_rate.value, 3), round(c.tie_rate, 3)
        (0.7, 0.333)
    """
    p = _as_float(prefs, "prefs")
    la, lb = _as_float(lengths_a, "lengths_a", p.size), _as_float(lengths_b, "lengths_b", p.size)
    keep = ~np.isnan(p)
    return _summarise(
        np.where(keep, p, 0.5),
        la,
        lb,
        keep,
        judge_name=judge_name,
        description=description,
        seed=seed,
        n_boot=n_boot,
        l2=l2,
    )


def response_lengths(responses: Sequence[str], tokenizer: Any = None) -> Float[np.ndarray, " n"]:
    """Length of each response: tokens with ``tokenizer`` (no special tokens), else whitespace words.

    Example:
        >>> response_lengths(["the cat sat", "", "hello"]).tolist()
        [3.0, 0.0, 1.0]
    """
    if tokenizer is None:
        return np.array([len(r.split()) for r in responses], dtype=np.float64)
    return np.array(
        [len(tokenizer(r, add_special_tokens=False)["input_ids"]) if r else 0 for r in responses],
        dtype=np.float64,
    )


def score_once(
    judge: Any, instructions: Sequence[str], *responses: Sequence[str]
) -> list[Float[np.ndarray, " n"]]:
    """Score several systems' responses with a pointwise judge, each distinct (request, answer) once.

    A model judge's score can move in its last digits with the batch a text is scored in (texts
    are batched by length, so the neighbours and the padding change). Scoring each distinct pair
    once, in one call, gives equal answers equal scores: they tie exactly instead of being
    ordered by rounding noise.

    Args:
        judge: A pointwise judge.
        instructions: The requests, one per item.
        *responses: Each system's responses, one per item.

    Returns:
        One score array per system, in the order given.

    Example:
        >>> from icon2_lens.judge.surface import SurfaceJudge
        >>> a, b = score_once(SurfaceJudge("length"), ["q", "r"], ["one two", "x"], ["one two", "x y z"])
        >>> a.tolist(), b.tolist()
        ([2.0, 1.0], [2.0, 3.0])
    """
    for rows in responses:
        if len(rows) != len(instructions):
            raise ValueError("every system needs one response per instruction")
    keys = list(dict.fromkeys((q, r) for rows in responses for q, r in zip(instructions, rows)))
    if not keys:
        return [np.empty(0) for _ in responses]
    values = np.asarray(judge.score([q for q, _ in keys], [r for _, r in keys]), dtype=float)
    if values.shape != (len(keys),):
        raise ValueError(
            f"judge {judge.name!r} returned scores of shape {values.shape} for {len(keys)} responses"
        )
    table = dict(zip(keys, values))
    return [np.array([table[(q, r)] for q, r in zip(instructions, rows)]) for rows in responses]


def compare_systems(
    judge: Any,
    instructions: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    lengths_a: npt.ArrayLike | None = None,
    lengths_b: npt.ArrayLike | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    l2: float = 1.0,
) -> Comparison:
    """Judge both systems' responses to the same instructions and compare them.

    Args:
        judge: A pointwise or pairwise judge (:mod:`icon2_lens.judge.base`).
        instructions: The instructions, one per item.
        responses_a: System ``a``'s responses.
        responses_b: System ``b``'s responses.
        lengths_a: Lengths of ``a``'s responses (default: tokens with the judge's tokenizer if it
            has one, else whitespace words).
        lengths_b: Same for ``b``.
        seed: Seed of the bootstrap.
        n_boot: Bootstrap resamples.
        l2: L2 penalty on the length slope.

    Example:
        >>> from icon2_lens.judge.rules import RefusalJudge
        >>> c = compare_systems(RefusalJudge(), ["x", "y"], ["I cannot help.", "ok"], ["ok", "ok"], n_boot=100)
        >>> c.judge, c.win_rate.value
        ('refusal', 0.75)
    """
    if not (len(instructions) == len(responses_a) == len(responses_b)):
        raise ValueError("instructions, responses_a and responses_b must have the same length")
    tok = getattr(judge, "tokenizer", None)
    la = response_lengths(responses_a, tok) if lengths_a is None else lengths_a
    lb = response_lengths(responses_b, tok) if lengths_b is None else lengths_b
    common = dict(
        lengths_a=la,
        lengths_b=lb,
        judge_name=judge.name,
        description=judge.description,
        seed=seed,
        n_boot=n_boot,
        l2=l2,
    )
    notes: dict[str, list[float]] = {}

    def note() -> None:
        for attr, key in (
            ("last_position_bias", "position_bias"),
            ("last_label_mass", "label_mass"),
        ):
            value = getattr(judge, attr, None)
            if value is not None:
                notes.setdefault(key, []).append(float(value))

    if judge.kind == "pointwise":
        scores_a, scores_b = score_once(judge, instructions, responses_a, responses_b)
        note()
        result = compare_pointwise(scores_a, scores_b, **common)
    elif judge.kind == "pairwise":
        prefs = judge.prefer(instructions, responses_a, responses_b)
        note()
        result = compare_pairwise(prefs, **common)
    else:
        raise ValueError(
            f"judge {judge.name!r} has unknown kind {judge.kind!r}; expected pointwise or pairwise"
        )
    result.notes.update({k: float(np.mean(v)) for k, v in notes.items()})
    return result
