"""Per-layer diagnostics of direction sets, and the rule that recommends a layer interval.

All accuracies are measured on **held-out** instructions (never used to fit the directions):

``heldout_paired_acc``
    Fraction of held-out contrasts ``Δ = h⁺ − h⁻`` with ``Δ · u > 0``: does the direction order
    the two prompts of the same instruction correctly?
``heldout_single_acc``
    Classify every single held-out activation as positive if its projection exceeds the
    midpoint of the mean positive and mean negative *training* projections. Harder: it must
    separate prompts across instructions, not just within a pair.
``separation``
    ``(mean proj⁺ − mean proj⁻) / pooled std`` on held-out activations (a d′).

Recommended interval (:func:`recommend_interval`): a window of ``round(n_layers / 3)``
consecutive layers (Icon² steers about a third of the network), excluding the first and the last
block, that maximises the mean ``heldout_single_acc``; among windows within 0.005 of the best, the
one whose centre is closest to the middle of the network wins (Icon² finds middle layers steer
best). Windows holding a layer flagged by the wording check are left out; when every window
holds one, only the windows with the fewest flagged layers compete (and a warning says so). The
rule is a starting point: read the layer-selection plot.

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> g = torch.Generator().manual_seed(0)
    >>> neg = torch.randn(20, 3, 4, generator=g); pos = neg + torch.tensor([2.0, 0, 0, 0])
    >>> ds = DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=torch.eye(4)[:1].repeat(3, 1), method="mean_diff")
    >>> layer_table(ds, pos[:10], neg[:10], pos[10:], neg[10:])["heldout_paired_acc"].tolist()
    [1.0, 1.0, 1.0]
"""

import logging
import math
from collections.abc import Collection, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .set import DirectionSet

__all__ = [
    "layer_table",
    "recommend_interval",
    "layer_cosines",
    "criterion_cosines",
]

logger = logging.getLogger(__name__)


def layer_table(
    ds: DirectionSet,
    pos_train: Float[Tensor, "n layer d_model"],
    neg_train: Float[Tensor, "n layer d_model"],
    pos_heldout: Float[Tensor, "m layer d_model"],
    neg_heldout: Float[Tensor, "m layer d_model"],
) -> pd.DataFrame:
    """One row per layer of ``ds``: held-out accuracies, separation and fit statistics."""
    if pos_heldout.shape[0] == 0:
        raise ValueError("no held-out activations: pass at least one held-out instruction")
    p_tr, n_tr = ds.project(pos_train), ds.project(neg_train)
    p_ho, n_ho = ds.project(pos_heldout), ds.project(neg_heldout)
    mid = (p_tr.mean(0) + n_tr.mean(0)) / 2
    paired = ((p_ho - n_ho) > 0).float().mean(0)
    single = ((p_ho > mid).float().sum(0) + (n_ho < mid).float().sum(0)) / (2 * p_ho.shape[0])
    gap = p_ho.mean(0) - n_ho.mean(0)
    if p_ho.shape[0] > 1:
        pooled = torch.sqrt((p_ho.var(0) + n_ho.var(0)) / 2)
    else:
        pooled = torch.full_like(gap, float("nan"))
    rows = []
    for j, layer in enumerate(ds.layers):
        s = ds.stats[j] if ds.stats else {}
        sep = float(gap[j] / pooled[j]) if float(pooled[j]) > 0 else float("nan")
        rows.append(
            {
                "criterion": ds.criterion,
                "layer": layer,
                "hook_name": ds.hook_names[j],
                "heldout_paired_acc": float(paired[j]),
                "heldout_single_acc": float(single[j]),
                "separation": sep,
                "heldout_gap": float(gap[j]),
                "explained_variance": s.get("explained_variance", float("nan")),
                "cos_mean_diff": s.get("cos_mean_diff", float("nan")),
                "train_paired_acc": s.get("train_paired_acc", float("nan")),
                "scale": s.get("scale", float("nan")),
                "mean_resid_norm": s.get("mean_resid_norm", float("nan")),
            }
        )
    df = pd.DataFrame(rows)
    df["relative_scale"] = df["scale"] / df["mean_resid_norm"]
    return df


def recommend_interval(
    table: pd.DataFrame,
    n_layers: int,
    *,
    width: int | None = None,
    score: str = "heldout_single_acc",
    avoid: Collection[int] = (),
) -> tuple[int, int]:
    """Pick a contiguous layer interval ``(first, last)`` by the rule in the module docstring.

    Args:
        table: Output of :func:`layer_table` (one criterion).
        n_layers: Number of blocks of the model.
        width: Interval length; default ``max(1, round(n_layers / 3))``.
        score: Column to maximise.
        avoid: Layers no window may hold; when every window holds one, the window is chosen
            among those holding the fewest (with a warning).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": range(9), "heldout_single_acc": [.5, .6, .9, .9, .9, .9, .9, .7, .5]})
        >>> recommend_interval(t, 9)
        (3, 5)
        >>> recommend_interval(t, 9, avoid={3})
        (4, 6)
        >>> recommend_interval(t, 9, avoid={2, 3, 5})  # no clean window: the fewest flagged
        (4, 6)
    """
    if table.empty:
        raise ValueError("empty diagnostics table")
    width = width or max(1, round(n_layers / 3))
    by_layer = dict(zip(table["layer"].astype(int), table[score].astype(float)))
    inner = [layer for layer in sorted(by_layer) if 0 < layer < n_layers - 1] or sorted(by_layer)
    width = min(width, len(inner))
    candidates = []
    for start in range(len(inner) - width + 1):
        window = inner[start : start + width]
        if window[-1] - window[0] != width - 1:
            continue  # not contiguous (layers missing from the table)
        vals = [by_layer[layer] for layer in window]
        mean = sum(vals) / len(vals) if not any(math.isnan(v) for v in vals) else -math.inf
        centre = (window[0] + window[-1]) / 2
        candidates.append((mean, -abs(centre - (n_layers - 1) / 2), window[0], window[-1]))
    if not candidates:  # scattered layers: fall back to the single best layer
        best = max(inner, key=lambda layer: by_layer[layer])
        return best, best
    avoid = set(avoid)

    def n_flagged(c) -> int:
        return len(avoid & set(range(c[2], c[3] + 1)))

    fewest = min(n_flagged(c) for c in candidates)
    if fewest:
        logger.warning(
            "every %d-layer window holds a layer flagged by the wording check (%s); the interval "
            "is chosen among the windows with the fewest (%d): read the layer-selection plot",
            width,
            ", ".join(map(str, sorted(avoid))),
            fewest,
        )
    candidates = [c for c in candidates if n_flagged(c) == fewest]
    top = max(c[0] for c in candidates)
    near = [c for c in candidates if c[0] >= top - 0.005]
    _, _, first, last = max(near, key=lambda c: (c[1], c[0]))
    return first, last


def layer_cosines(ds: DirectionSet) -> pd.DataFrame:
    """Layer × layer cosine similarity of one criterion's directions (index and columns: layer)."""
    v = torch.nn.functional.normalize(ds.vectors, dim=-1)
    return pd.DataFrame((v @ v.T).numpy(), index=list(ds.layers), columns=list(ds.layers))


def criterion_cosines(sets: Sequence[DirectionSet]) -> pd.DataFrame:
    """Long table (layer, criterion_a, criterion_b, cosine) over the layers the sets share."""
    if not sets:
        raise ValueError("no direction sets given")
    shared = sorted(set.intersection(*(set(s.layers) for s in sets)))
    rows = []
    for layer in shared:
        for a in sets:
            for b in sets:
                cos = torch.nn.functional.cosine_similarity(a[layer], b[layer], dim=0)
                rows.append(
                    {
                        "layer": layer,
                        "criterion_a": a.criterion,
                        "criterion_b": b.criterion,
                        "cosine": float(cos),
                    }
                )
    return pd.DataFrame(rows)
