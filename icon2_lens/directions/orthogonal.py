"""Project confound directions out of a direction set.

At every layer the confound vectors span a subspace ``C`` (an orthonormal basis ``Q`` from their
SVD, dropping numerically dependent vectors). The direction ``u`` is replaced by its component
outside ``C``, renormalised: ``u' = (u − Q Qᵀ u) / ‖u − Q Qᵀ u‖``. Since ``u'·u = ‖u − QQᵀu‖ > 0``,
``u'`` keeps the sign convention of ``u``. The share of ``u`` that was removed (``‖Qᵀu‖²``) is
recorded per layer in ``meta["orthogonalized"]``, and so are the confound names.

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> u = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=-1)
    >>> ds = DirectionSet(criterion="toy", layers=(0,), vectors=u, method="mean_diff")
    >>> c = DirectionSet(criterion="length", layers=(0,), vectors=torch.tensor([[1.0, 0.0, 0.0]]), method="mean_diff")
    >>> out = orthogonalize(ds, {"length": c})
    >>> out.vectors.tolist(), out.meta["orthogonalized"]["removed_share"]
    ([[0.0, 1.0, 0.0]], [0.5])
"""

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .set import DirectionSet

__all__ = ["orthogonalize", "confound_basis", "subspace_share"]

#: Singular values below this (relative to the largest) count as linearly dependent.
RANK_TOL = 1e-6
#: A direction whose remainder is shorter than this lies inside the confound subspace.
MIN_REMAINDER = 1e-4


def confound_basis(vectors: Float[Tensor, "k d_model"]) -> Float[Tensor, "d_model r"]:
    """Orthonormal basis (float64 columns) of the span of ``vectors``."""
    v = vectors.to(torch.float64)
    u, s, _ = torch.linalg.svd(v.T, full_matrices=False)
    keep = s > RANK_TOL * float(s.max()) if s.numel() and float(s.max()) > 0 else s > 0
    return u[:, keep]


def subspace_share(u: Float[Tensor, " d_model"], basis: Float[Tensor, "d_model r"]) -> float:
    """Fraction of ``‖u‖²`` inside the span of ``basis`` (``‖Qᵀu‖² / ‖u‖²``)."""
    x = u.to(torch.float64)
    return float(((basis.T @ x) ** 2).sum() / (x @ x))


def _confound_rows(confounds: Mapping[str, DirectionSet], layer: int) -> Tensor:
    rows = []
    for name, c in confounds.items():
        if layer not in c.layers:
            raise ValueError(
                f"confound {name!r} has no direction at layer {layer} (it holds {list(c.layers)}); "
                "fit the confounds at the direction set's layers"
            )
        rows.append(c[layer])
    return torch.stack(rows)


def orthogonalize(
    ds: DirectionSet,
    confounds: Mapping[str, DirectionSet],
    *,
    stats: Sequence[Mapping[str, float]] | None = None,
) -> DirectionSet:
    """``ds`` with every confound direction projected out at each layer (see the module docstring).

    Args:
        ds: The direction set.
        confounds: Name -> confound direction set holding every layer of ``ds``.
        stats: Per-layer statistics of the new vectors (e.g. from
            :func:`~icon2_lens.directions.fit.direction_stats`); by default only
            ``mean_resid_norm`` (what steering needs) is kept and the rest is dropped, since it
            described the old vectors.

    Raises:
        ValueError: No confounds, a width or layer mismatch, or a direction that lies inside the
            confound subspace at some layer.
    """
    if not confounds:
        raise ValueError("name at least one confound to orthogonalise against")
    for name, c in confounds.items():
        if c.d_model != ds.d_model:
            raise ValueError(
                f"confound {name!r} is {c.d_model} wide but the directions are {ds.d_model}"
            )
        if c.site != ds.site:
            raise ValueError(f"confound {name!r} was read at {c.site}, the directions at {ds.site}")
    rows, removed = [], []
    for j, layer in enumerate(ds.layers):
        q = confound_basis(_confound_rows(confounds, layer))
        u = ds.vectors[j].to(torch.float64)
        rest = u - q @ (q.T @ u)
        norm = float(rest.norm())
        if norm < MIN_REMAINDER:
            raise ValueError(
                f"the {ds.criterion!r} direction at layer {layer} lies inside the span of "
                f"{', '.join(confounds)}; orthogonalising would leave nothing: drop a confound"
            )
        rows.append((rest / norm).to(torch.float32))
        removed.append(round(subspace_share(u, q), 8))
    if stats is None:
        stats = tuple(
            {"mean_resid_norm": s["mean_resid_norm"]} for s in ds.stats if "mean_resid_norm" in s
        )
        stats = stats if len(stats) == len(ds.layers) else ()
    meta = dict(ds.meta)
    meta["orthogonalized"] = {"confounds": list(confounds), "removed_share": removed}
    return DirectionSet(
        criterion=ds.criterion,
        layers=ds.layers,
        vectors=torch.stack(rows).contiguous(),
        site=ds.site,
        method=ds.method,
        stats=tuple(stats),
        meta=meta,
    )
