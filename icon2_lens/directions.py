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

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ._types import Direction
from .hooks import resid_hook_name

__all__ = [
    "METHODS",
    "Method",
    "fit_direction",
    "orient",
    "DirectionSet",
    "fit_directions",
    "SIGN_CONVENTION",
]

Method = Literal["pca", "pca_symmetric", "mean_diff"]
METHODS: tuple[str, ...] = ("pca", "pca_symmetric", "mean_diff")
SIGN_CONVENTION = "mean((h_pos - h_neg) . u) > 0: positive projection = towards the positive prompt"


def _check_method(method: str) -> None:
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
    _check_method(method)
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError(f"need a non-empty [n, d_model] tensor of contrasts, got {tuple(diffs.shape)}")
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
            raise ValueError("centred PCA needs at least 2 contrasts; use method='mean_diff' or center=False")
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
    pos: Float[Tensor, "n layer d_model"],
    neg: Float[Tensor, "n layer d_model"],
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
        raise ValueError(f"positive and negative activations differ in shape: {tuple(pos.shape)} vs {tuple(neg.shape)}")
    if pos.ndim != 3 or pos.shape[0] == 0:
        raise ValueError(f"expected non-empty [n, layer, d_model] activations, got {tuple(pos.shape)}")
    diffs = pos - neg
    rows, stats = [], []
    for j in range(pos.shape[1]):
        u, explained = fit_direction(diffs[:, j], method, center=center)
        proj = diffs[:, j] @ u
        mean_diff = diffs[:, j].mean(dim=0)
        norms = torch.cat([pos[:, j], neg[:, j]]).norm(dim=-1)
        rows.append(u)
        stats.append(
            {
                "scale": float(proj.mean()),
                "explained_variance": explained,
                "cos_mean_diff": float(torch.nn.functional.cosine_similarity(u, mean_diff, dim=0)),
                "train_paired_acc": float((proj > 0).float().mean()),
                "mean_resid_norm": float(norms.mean()),
            }
        )
    return torch.stack(rows), stats


@dataclass(frozen=True, eq=False)
class DirectionSet:
    """Unit directions of one criterion at several layers, with everything needed to reuse them.

    Attributes:
        criterion: Criterion name (``honesty``, ...).
        layers: Block indices, sorted, one per row of ``vectors``.
        vectors: Unit directions ``[layer, d_model]``, float32 on CPU.
        site: Residual site the activations were read at.
        method: ``pca``, ``pca_symmetric`` or ``mean_diff``.
        stats: Per-layer statistics (same order as ``layers``), see :func:`fit_directions`.
        meta: Provenance: model name and fingerprint, prompts, centring, seed, versions...

    Example:
        >>> import torch
        >>> ds = DirectionSet(criterion="toy", layers=(0, 1), vectors=torch.eye(2, 4), site="resid_post", method="mean_diff")
        >>> ds
        DirectionSet(criterion='toy', model=None, site=resid_post, layers=[0, 1], method=mean_diff)
        >>> ds[1]
        tensor([0., 1., 0., 0.])
    """

    criterion: str
    layers: tuple[int, ...]
    vectors: Float[Tensor, "layer d_model"]
    site: str = "resid_post"
    method: str = "pca"
    stats: tuple[Mapping[str, float], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_method(self.method)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors must be [len(layers)={len(self.layers)}, d_model], got {tuple(self.vectors.shape)}"
            )
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be sorted and distinct, got {list(self.layers)}")
        if self.stats and len(self.stats) != len(self.layers):
            raise ValueError("stats must hold one entry per layer")

    def __repr__(self) -> str:
        return (
            f"DirectionSet(criterion={self.criterion!r}, model={self.meta.get('model_name')!r}, "
            f"site={self.site}, layers={list(self.layers)}, method={self.method})"
        )

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def hook_names(self) -> list[str]:
        return [resid_hook_name(layer, self.site) for layer in self.layers]

    def index(self, layer_or_hook: int | str) -> int:
        """Row of ``vectors`` for a block index held by this set, or for its hook name."""
        if isinstance(layer_or_hook, str):
            names = self.hook_names
            if layer_or_hook not in names:
                raise KeyError(f"{layer_or_hook!r} is not in this set; it holds {names}")
            return names.index(layer_or_hook)
        layer = layer_or_hook
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not in this set; it holds layers {list(self.layers)}")
        return self.layers.index(layer)

    def __getitem__(self, layer_or_hook: int | str) -> Direction:
        return self.vectors[self.index(layer_or_hook)]

    def stat(self, name: str) -> list[float]:
        """One per-layer statistic as a list (``scale``, ``mean_resid_norm``, ...)."""
        if not self.stats:
            raise KeyError("this direction set has no per-layer statistics")
        return [float(s[name]) for s in self.stats]

    def subset(self, layers: list[int]) -> "DirectionSet":
        """A new set restricted to ``layers``."""
        idx = [self.index(layer) for layer in layers]
        order = sorted(range(len(idx)), key=lambda k: layers[k])
        idx = [idx[k] for k in order]
        return replace(
            self,
            layers=tuple(self.layers[i] for i in idx),
            vectors=self.vectors[idx].clone(),
            stats=tuple(self.stats[i] for i in idx) if self.stats else (),
        )

    def project(self, acts: Float[Tensor, "n layer d_model"]) -> Float[Tensor, "n layer"]:
        """Dot product of activations (one row per layer of this set) with each layer's direction."""
        if acts.ndim != 3 or acts.shape[1:] != self.vectors.shape:
            raise ValueError(
                f"activations must be [n, {len(self.layers)}, {self.d_model}] to match this set, "
                f"got {tuple(acts.shape)}"
            )
        return torch.einsum("nld,ld->nl", acts.to(torch.float32), self.vectors)

    def save(self, path: str | Path) -> Path:
        """Write ``directions.safetensors`` and ``cfg.json`` into directory ``path``."""
        from .io import save_direction_set

        return save_direction_set(self, path)

    @classmethod
    def load(cls, path: str | Path, *, model: Any = None, check_fingerprint: bool = True) -> "DirectionSet":
        """Read a saved set; with ``model``, check it was extracted from that model."""
        from .io import load_direction_set

        return load_direction_set(path, model=model, check_fingerprint=check_fingerprint)
