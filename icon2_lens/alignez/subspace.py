"""The AlignEZ math: per-layer help/harm subspaces from paired embeddings, and the gated edit.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> axis = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    >>> harm = torch.randn(32, 16, generator=g)
    >>> help_ = harm + 2.0 * axis + 0.05 * torch.randn(32, 16, generator=g)
    >>> sub = fit_subspace(help_, harm, k=2)
    >>> float(sub.help[0] @ axis) > 0.99, bool(torch.equal(sub.harm, -sub.help))
    (True, True)
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .config import HARM_RULES, check_choice

__all__ = ["Subspace", "fit_subspace", "heldout_separation", "gated_edit"]


@dataclass(frozen=True)
class Subspace:
    """One layer's fitted directions (:func:`fit_subspace`).

    Attributes:
        help: ``[k, d_model]`` unit help directions (zero rows beyond the data's rank).
        harm: ``[k, d_model]`` unit harm directions (zero rows beyond the rank).
        singular_values: ``[k]`` singular values of ``D`` (0 beyond the rank).
        explained: Fraction of ``‖D‖²`` in the help directions.
        separation: Fraction of pairs with ``D · θ_1 > 0`` (in sample).
    """

    help: Float[Tensor, "k d_model"]
    harm: Float[Tensor, "k d_model"]
    singular_values: Float[Tensor, " k"]
    explained: float
    separation: float


def _top_oriented(x: Tensor, k: int, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Top ``k`` right singular vectors of ``x`` (float64), each flipped so ``mean(reference · v) ≥ 0``."""
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    d = x.shape[1]
    out = torch.zeros(k, d, dtype=torch.float64)
    sv = torch.zeros(k, dtype=torch.float64)
    tol = float(s[0]) * max(x.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
    for j in range(min(k, s.numel())):
        if float(s[j]) <= tol:
            break
        v = vh[j]
        if float((reference @ v).mean()) < 0:
            v = -v
        out[j], sv[j] = v, s[j]
    return out, sv


def fit_subspace(
    help_emb: Float[Tensor, "n_pairs d_model"],
    harm_emb: Float[Tensor, "n_pairs d_model"],
    k: int = 2,
    *,
    harm: str = "mirror",
) -> Subspace:
    """Help and harm directions of one layer from paired answer embeddings (deterministic SVD).

    Args:
        help_emb: Embeddings of the answers that followed the good description, one row per pair.
        harm_emb: Embeddings of the answers that followed the bad description, same order.
        k: Directions to keep.
        harm: ``mirror`` (``η = −θ``) or ``subspace`` (SVD of the harm embeddings after
            removing the shared mean; see the module docstring).

    Returns:
        A :class:`Subspace` of float32 tensors.

    Raises:
        ValueError: Mismatched or empty inputs, non-finite values, all differences zero.

    Example:
        >>> import torch
        >>> d = torch.zeros(4, 3); d[:, 0] = torch.tensor([1.0, 2.0, 1.5, 0.5])
        >>> sub = fit_subspace(d, torch.zeros(4, 3), k=2)
        >>> torch.allclose(sub.help[0], torch.tensor([1.0, 0.0, 0.0])), bool((sub.help[1] == 0).all())
        (True, True)
    """
    check_choice("harm", harm, HARM_RULES)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if help_emb.shape != harm_emb.shape or help_emb.ndim != 2 or help_emb.shape[0] == 0:
        raise ValueError(
            f"need two non-empty [n_pairs, d_model] tensors of the same shape, got "
            f"{tuple(help_emb.shape)} and {tuple(harm_emb.shape)}"
        )
    hp, hm = help_emb.detach().to("cpu", torch.float64), harm_emb.detach().to("cpu", torch.float64)
    if not (torch.isfinite(hp).all() and torch.isfinite(hm).all()):
        raise ValueError("the embeddings contain NaN or infinite values")
    diff = hp - hm
    if float(diff.abs().max()) == 0.0:
        raise ValueError(
            "every help embedding equals its harm embedding: the pairs carry no contrast"
        )
    help_dirs, sv = _top_oriented(diff, k, diff)
    if harm == "mirror":
        harm_dirs = -help_dirs
    else:
        shared = torch.cat([hp, hm]).mean(0, keepdim=True)
        z = hm - shared
        harm_dirs = (
            _top_oriented(z, k, z)[0] if float(z.abs().max()) > 0 else torch.zeros_like(help_dirs)
        )
    total = float((diff**2).sum())
    explained = float(((diff @ help_dirs.T) ** 2).sum() / total)
    separation = float((diff @ help_dirs[0] > 0).double().mean())
    return Subspace(
        help_dirs.float().contiguous(),
        harm_dirs.float().contiguous(),
        sv.float(),
        explained,
        separation,
    )


def heldout_separation(diff: Tensor) -> float:
    """Two-fold held-out accuracy of the top direction: fit on even pairs, test ``D · θ > 0`` on odd."""
    n = diff.shape[0]
    if n < 2:
        return float("nan")
    d = diff.to(torch.float64)
    folds = (torch.arange(0, n, 2), torch.arange(1, n, 2))
    accs = []
    for fit_idx, test_idx in (folds, folds[::-1]):
        part = d[fit_idx]
        if float(part.abs().max()) == 0.0:
            accs.append(0.5)
            continue
        theta = _top_oriented(part, 1, part)[0][0]
        accs.append(float((d[test_idx] @ theta > 0).double().mean()))
    return sum(accs) / len(accs)


def gated_edit(
    resid: Float[Tensor, "batch pos d_model"],
    help_dirs: Float[Tensor, "k d_model"],
    harm_dirs: Float[Tensor, "k d_model"],
    help_mask: Float[Tensor, "batch k"],
    harm_mask: Float[Tensor, "batch k"],
    *,
    center: Float[Tensor, " d_model"],
    tau: float,
    push: float,
    strength: float,
) -> Float[Tensor, "batch pos d_model"]:
    """The AlignEZ edit of one layer: ``x + s·r·(Σ m·tanh(p)·θ − Σ m·ReLU(p)·η)``, a new tensor.

    Args:
        resid: Residual stream.
        help_dirs: Help directions ``θ``.
        harm_dirs: Harm directions ``η``.
        help_mask: Per row, 1.0 for each kept help direction (0.0 otherwise).
        harm_mask: Per row, 1.0 for each kept harm direction.
        center: ``c``; gates read ``p = ⟨x − c, ·⟩ / τ``.
        tau: Gate temperature ``τ`` (> 0).
        push: Push ``r``.
        strength: ``s``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[-2.0, 1.0], [3.0, 1.0]]])
        >>> eta = torch.tensor([[1.0, 0.0]])
        >>> out = gated_edit(x, torch.zeros(1, 2), eta, torch.zeros(1, 1), torch.ones(1, 1),
        ...                  center=torch.zeros(2), tau=1.0, push=1.0, strength=1.0)
        >>> out.tolist()  # harm removed where present (3.0), left alone where absent (-2.0)
        [[[-2.0, 1.0], [0.0, 1.0]]]
    """
    z = resid.float() - center.to(resid.device, torch.float32)
    u = help_dirs.to(resid.device, torch.float32)
    e = harm_dirs.to(resid.device, torch.float32)
    coef_h = torch.tanh(z @ u.T / tau) * help_mask.to(resid.device, torch.float32).unsqueeze(1)
    coef_x = torch.relu(z @ e.T / tau) * harm_mask.to(resid.device, torch.float32).unsqueeze(1)
    delta = (strength * push) * (coef_h @ u - coef_x @ e)
    return resid + delta.to(resid.dtype)
