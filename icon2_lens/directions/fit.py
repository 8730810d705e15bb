"""Per-layer preference directions from contrastive activations.

For every layer, the contrasts ``Δ_i = h⁺_i − h⁻_i`` (activations under the positive and the
negative system prompt, same instruction) are reduced to one unit vector ``u``:

``pca``
    First principal component of the contrasts, **centred** (subtract the mean contrast first),
    as a standard PCA routine does. This is the literal reading of Icon² §3.1 ("PCA over the
    difference vectors"). Centring removes the mean contrast, so ``u`` follows the *variation*
    of the contrast across instructions; set ``center=False`` for an uncentred PCA.
``pca_symmetric``
    Uncentred SVD of ``[Δ; −Δ]`` (the pair-order-free form used by steering-vectors and,
    through random flips, RepE). Its top right-singular vector equals the uncentred PC1 of ``Δ``,
    so it is dominated by the mean contrast when the contrasts agree in sign.
``mean_diff``
    The normalised mean contrast.

Every method is deterministic (full SVD in float64, no randomised solver) and oriented so that
``mean(Δ · u) > 0``: a positive projection always means "more like the positive prompt".

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> planted = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    >>> neg = torch.randn(32, 8, generator=g)
    >>> pos = neg + 3 * planted + 0.1 * torch.randn(32, 8, generator=g)
    >>> u, ev = fit_direction(pos - neg, "pca_symmetric")
    >>> float(u @ planted) > 0.99
    True
"""

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from icon2_lens._types import Direction, LayerActs

__all__ = [
    "METHODS",
    "Method",
    "check_method",
    "fit_direction",
    "orient",
    "fit_directions",
    "direction_stats",
    "SIGN_CONVENTION",
]

Method = Literal["pca", "pca_symmetric", "mean_diff"]
METHODS: tuple[str, ...] = ("pca", "pca_symmetric", "mean_diff")
SIGN_CONVENTION = "mean((h_pos - h_neg) . u) > 0: positive projection = towards the positive prompt"


def check_method(method: str) -> None:
    """Raise a ``ValueError`` naming the methods unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def orient(u: Direction, diffs: Float[Tensor, "n d_model"]) -> Direction:
    """Flip ``u`` so that the mean projection of the contrasts on it is positive (ties: keep)."""
    return -u if float((diffs.to(u.dtype) @ u).mean()) < 0 else u


def fit_direction(
    diffs: Float[Tensor, "n d_model"], method: str = "pca", *, center: bool = True
) -> tuple[Direction, float]:
    """One unit direction from contrast vectors.

    Args:
        diffs: Contrasts ``h⁺ − h⁻``, one row per instruction.
        method: ``pca``, ``pca_symmetric`` or ``mean_diff`` (see the module docstring).
        center: For ``pca`` only: subtract the mean contrast before the SVD.

    Returns:
        ``(u, explained)``: the float32 unit vector, oriented, and the fraction of the contrasts'
        variance (about the mean when centred, about zero otherwise) that lies along ``u``.

    Raises:
        ValueError: No contrasts, all contrasts zero, or centred PCA on fewer than 2 contrasts.
    """
    check_method(method)
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError(
            f"need a non-empty [n, d_model] tensor of contrasts, got {tuple(diffs.shape)}"
        )
    x = diffs.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("contrast vectors contain NaN or infinite values")
    if float(x.abs().max()) == 0.0:
        raise ValueError(
            "all contrast vectors are zero: the positive and negative prompts give identical "
            "activations (are the two system prompts different, and is the site after them?)"
        )
    centred = method == "pca" and center
    if centred:
        if x.shape[0] < 2:
            raise ValueError(
                "centred PCA needs at least 2 contrasts; use method='mean_diff' or center=False"
            )
        x = x - x.mean(dim=0, keepdim=True)
    total = float((x**2).sum())
    if method == "mean_diff":
        u = diffs.detach().to(torch.float64).mean(dim=0)
        if float(u.norm()) == 0.0:
            raise ValueError("the mean contrast is zero; use a PCA method instead")
        u = u / u.norm()
    else:
        # pca_symmetric: SVD of [Δ; −Δ] has the right-singular vectors of Δ, so decompose Δ.
        if total == 0.0:
            raise ValueError("the contrasts do not vary around their mean; use method='mean_diff'")
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        u = vh[0]
    explained = float(((x @ u) ** 2).sum() / total) if total > 0 else 0.0
    u = orient(u, diffs.detach().to(torch.float64))
    return u.to(torch.float32).contiguous(), explained


def fit_directions(
    pos: LayerActs,
    neg: LayerActs,
    method: str = "pca",
    *,
    center: bool = True,
) -> tuple[Float[Tensor, "layer d_model"], list[dict[str, float]]]:
    """Fit one direction per layer from paired activations and collect per-layer statistics.

    Returns:
        ``(directions, stats)``: unit rows ``[layer, d_model]`` and, per layer, ``scale``
        (mean projection of the contrasts), ``explained_variance``, ``cos_mean_diff`` (cosine
        with the mean contrast), ``train_paired_acc`` (fraction of contrasts projecting
        positively) and ``mean_resid_norm`` (mean norm of all activations, the unit for relative
        steering strengths).
    """
    if pos.shape != neg.shape:
        raise ValueError(
            f"positive and negative activations differ in shape: {tuple(pos.shape)} vs {tuple(neg.shape)}"
        )
    if pos.ndim != 3 or pos.shape[0] == 0:
        raise ValueError(
            f"expected non-empty [n, layer, d_model] activations, got {tuple(pos.shape)}"
        )
    diffs = pos - neg
    rows, explained = [], []
    for j in range(pos.shape[1]):
        u, ev = fit_direction(diffs[:, j], method, center=center)
        rows.append(u)
        explained.append(ev)
    vectors = torch.stack(rows)
    stats = direction_stats(pos, neg, vectors, method, center=center)
    for s, ev in zip(stats, explained):  # the fit's own float64 value, before the float32 cast
        s["explained_variance"] = ev
    return vectors, stats


def direction_stats(
    pos: LayerActs,
    neg: LayerActs,
    vectors: Float[Tensor, "layer d_model"],
    method: str = "pca",
    *,
    center: bool = True,
) -> list[dict[str, float]]:
    """Per-layer statistics of given unit ``vectors`` on paired activations (see :func:`fit_directions`).

    ``explained_variance`` is measured the way ``method`` measures it: about the mean contrast for
    a centred PCA, about zero otherwise.
    """
    diffs = pos - neg
    stats = []
    for j in range(pos.shape[1]):
        u = vectors[j].to(torch.float32)
        proj = diffs[:, j] @ u
        x = diffs[:, j].to(torch.float64)
        if method == "pca" and center:
            x = x - x.mean(dim=0, keepdim=True)
        total = float((x**2).sum())
        explained = float(((x @ u.to(torch.float64)) ** 2).sum() / total) if total > 0 else 0.0
        mean_diff = diffs[:, j].mean(dim=0)
        norms = torch.cat([pos[:, j], neg[:, j]]).norm(dim=-1)
        stats.append(
            {
                "scale": float(proj.mean()),
                "explained_variance": explained,
                "cos_mean_diff": float(torch.nn.functional.cosine_similarity(u, mean_diff, dim=0)),
                "train_paired_acc": float((proj > 0).float().mean()),
                "mean_resid_norm": float(norms.mean()),
            }
        )
    return stats
