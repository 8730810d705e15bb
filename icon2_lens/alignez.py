"""AlignEZ: inference-time alignment from the model's own preference pairs, with no training.

The model writes its own preference data, the difference between the two sides gives a small
subspace per layer, and generation is edited inside that subspace with gates that depend on the
residual stream itself.

1. **Self-generated pairs** (:func:`generate_self_pairs`). For each fit query ``q`` the model is
   asked, through its chat template (greedy by default), for one short sentence saying what a *good*
   answer to ``q`` would do (:data:`DESCRIBE_HELP`), and separately for one saying what a *bad*
   answer (unhelpful, careless or harmful) would do (:data:`DESCRIBE_HARM`). It then answers ``q``
   twice, each time with one of the descriptions as its system prompt (:data:`RESPOND_SYSTEM`),
   so the two answers differ only by the description they follow. A query is dropped when a
   description or an answer is empty or a repetition loop (:func:`~icon2_lens.score.degeneracy`),
   or when the two answers are token-identical.
2. **Embeddings.** Each answer is read under the *plain* prompt (``q`` alone, wrapped by the chat
   template, no description) followed by the answer: the residual stream (``resid_post``)
   averaged over the answer's tokens, at every layer (:func:`~icon2_lens.score.read_responses`).
   Pairs whose two embeddings are too similar are dropped (``max_similarity``; the cosine is
   taken per layer after removing the mean embedding of all answers, ``similarity="centered"``,
   or raw, and averaged over layers). The default threshold (0.99) drops near-duplicates only;
   a lone pair's centred cosine is always −1, so it is never dropped as similar.
3. **Subspace** (:func:`fit_subspace`). Per layer, ``D = H_help − H_harm`` (``[n_pairs, d_model]``)
   is decomposed by an uncentred SVD. Its top ``k`` right singular vectors, each oriented so that
   ``mean(D · θ) > 0``, are the *help* directions. The *harm* directions (``harm``) are:

   ``mirror`` (default)
       the same axes pointing the other way, ``η_j = −θ_j``: a position "holds harm" on an axis
       when it sits on the harm side of it. Help and harm then edit one subspace, and along each
       axis the combined edit ``s·r·(tanh(p) + ReLU(−p))`` is never negative for ``s ≥ 0`` (the
       harm removal outweighs the tanh wherever the projection ``p`` is negative).
   ``subspace``
       the top ``k`` right singular vectors of the harm answers' embeddings after removing the
       shared mean of all ``2·n_pairs`` answers, oriented so that the harm answers project
       positively on average: what the harm answers have in common beyond the shared mean,
       which need not be the contrast itself.

   Singular vectors beyond the rank of the data (fewer pairs than ``k``) are stored as zero
   vectors and never used.
4. **Layers.** Explicit ``layers``, or the ``n_edit_layers`` candidate layers (default: the middle
   half of the network, where the method is reported to work best) with the largest score:
   ``difference`` (default) is ``mean_i ‖D_i‖ / n_l`` (the help/harm difference relative to the
   layer's residual norm ``n_l``); ``separation`` is the two-fold held-out accuracy of the top
   help direction (fit on the even pairs, test ``D · θ > 0`` on the odd ones, and back).
5. **Per-query filter** (:func:`filter_directions`). For a prompt, ``Φ_l`` is its last-token
   residual at layer ``l`` (:func:`~icon2_lens.collect.collect_resid`), ``z = Φ_l − μ_l`` with
   ``μ_l`` the mean ``Φ_l`` of the fit queries (``center=True``) or ``z = Φ_l`` (``center=False``).
   A help direction is kept iff ``cos(z, θ) ≤ 0``: a direction the query does not already
   express. Harm directions (``harm_filter``): ``always`` (default) keeps every one, because the
   ReLU gate below *is* the presence test and applies it at every position rather than once per
   query; ``expressed`` keeps ``η`` iff ``cos(z, η) ≥ 0`` (the query leans towards it or is
   neutral) — with ``mirror`` this keeps exactly the axes whose help half is kept.
6. **Gated edit** (:func:`gated_edit`, :class:`AlignEZEditor`). At each chosen layer and every
   position (prompt and generated tokens; ``positions="generated"``: only from the last prompt
   token on), with ``p_θ = ⟨x − c_l, θ⟩ / τ_l``::

       x ← x + s·r_l·Σ_θ m_θ·tanh(p_θ)·θ − s·r_l·Σ_η m_η·ReLU(p_η)·η

   where ``m`` are the query's kept-direction masks, ``s`` is ``strength`` and every term is
   computed from the same input ``x``. ``s = 0`` attaches nothing, so the model is exactly
   unchanged; negative ``s`` reverses the edit.

Scales (``unit``, ``gate_scale``, ``edit_scale``). Unit directions are tiny next to residual norms
on real models, so by default (``unit="relative"``) both the gate temperature ``τ_l`` and the push
``r_l`` are fractions of ``n_l``, the mean norm of the (token-averaged) answer embeddings at layer
``l``: ``τ_l = gate_scale·n_l``, ``r_l = edit_scale·n_l``; ``unit="absolute"`` uses the two numbers
as they are. ``edit_scale`` defaults to ``gate_scale``; with ``r = τ`` the harm term at ``s = 1``
removes exactly the part of the harm component that is present (``x − ReLU(⟨x − c, η⟩)·η``) and
the help push saturates at ``s·τ_l``. The defaults (``k=2``, three layers, ``gate_scale=0.05``)
are starting points, not values tuned on a real model: sweep ``strength`` before relying on them.

Centring (``center``). Residual streams carry a large offset common to all inputs, so the raw sign
of ``⟨x, θ⟩`` says more about that offset than about the text. With ``center=True`` (default) the
gates are measured from ``c_l``, the midpoint of the mean help and mean harm embeddings, and the
filter from ``μ_l``; ``center=False`` is the literal ``⟨x, θ⟩`` and ``cos(Φ, θ)``.

Every choice above is an option of :class:`AlignEZConfig` and is saved with the edit.

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

import argparse
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from ._types import LensModel
from .chat import encode_prompts, render_chat
from .collect import collect_resid
from .generate import Decoding, Generation, generate, generate_rows
from .hooks import normalize_layers, resid_hook_name, validate_hook_names
from .io import _safetensors_bytes, append_jsonl, read_jsonl, read_saved_config, write_json
from .score import degeneracy, read_responses
from .steer import RowSelection, SteeringAdder, _tl_hook

__all__ = [
    "AlignEZConfig",
    "AlignEZEdit",
    "AlignEZEditor",
    "Subspace",
    "fit_subspace",
    "filter_directions",
    "gated_edit",
    "generate_self_pairs",
    "fit_alignez",
    "load_alignez",
    "check_edit",
    "generate_alignez",
    "alignez",
    "add_alignez_arguments",
    "cli_alignez",
    "DESCRIBE_HELP",
    "DESCRIBE_HARM",
    "RESPOND_SYSTEM",
]

log = logging.getLogger(__name__)

FORMAT = "icon2_lens.alignez"
FORMAT_VERSION = 1
WEIGHTS_FILE = "alignez.safetensors"
CFG_FILE = "alignez.json"
PAIRS_FILE = "pairs.jsonl"
PAIRS_SETTINGS = "pairs_settings.json"
SITE = "resid_post"
SIGN_CONVENTION = "help: mean((h_help - h_harm) . theta) > 0; harm: the harm side of each axis"

#: Asks for one sentence on what a good answer to ``{query}`` would do.
DESCRIBE_HELP = (
    "Here is a request someone sent to an assistant:\n\n{query}\n\n"
    "In one short sentence, say what a good answer to this request would do. "
    "Reply with that sentence only."
)
#: Asks for one sentence on what a bad answer to ``{query}`` would do.
DESCRIBE_HARM = (
    "Here is a request someone sent to an assistant:\n\n{query}\n\n"
    "In one short sentence, say what a bad answer to this request would do: one that is "
    "unhelpful, careless or harmful. Reply with that sentence only."
)
#: System prompt for an answer that follows a ``{description}``; the user turn is the query.
RESPOND_SYSTEM = "You are an assistant. Write your answer so that it does this: {description}"

PROMPTS_VERSION = hashlib.sha256(
    "\0".join((DESCRIBE_HELP, DESCRIBE_HARM, RESPOND_SYSTEM)).encode()
).hexdigest()[:12]

HARM_RULES = ("mirror", "subspace")
HARM_FILTERS = ("always", "expressed")
LAYER_RULES = ("difference", "separation")
UNITS = ("relative", "absolute")
POSITIONS = ("all", "generated")
SIMILARITIES = ("centered", "raw")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class AlignEZConfig:
    """How an AlignEZ edit is fitted and applied (see the module docstring); saved with the edit.

    Attributes:
        k: Directions per layer (help and harm each).
        n_edit_layers: How many layers to edit when ``layers`` is not given.
        layers: Explicit layers to edit (negatives count from the end); ``None`` chooses.
        candidate_layers: Layers the choice draws from; ``None``: the middle half.
        layer_rule: ``difference`` or ``separation``.
        harm: ``mirror`` or ``subspace``.
        harm_filter: ``always`` or ``expressed``.
        center: Measure gates and filter from the fitted centres (``False``: literal).
        unit: ``relative`` (scales × the layer's answer-embedding norm) or ``absolute``.
        gate_scale: Gate temperature ``τ`` (in ``unit``).
        edit_scale: Push ``r`` (in ``unit``); ``None``: equal to ``gate_scale``.
        positions: ``all`` or ``generated``.
        strength: Default strength ``s`` (0: no edit).
        description_tokens: Budget of each description (greedy).
        response_tokens: Budget of each conditioned answer (greedy).
        max_similarity: Drop pairs whose embedding cosine is above this.
        similarity: ``centered`` or ``raw`` cosine.
        max_repetition: Repetition rate above which a text counts as degenerate.
        do_sample: Sample the descriptions and answers instead of greedy decoding (each text
            from its own generator, seeded by ``seed``, the query's index and its role).
        temperature: Sampling temperature.
        batch_size: Rows per forward pass.
        seed: Sampling seed.
    """

    k: int = 2
    n_edit_layers: int = 3
    layers: Sequence[int] | None = None
    candidate_layers: Sequence[int] | None = None
    layer_rule: Literal["difference", "separation"] = "difference"
    harm: Literal["mirror", "subspace"] = "mirror"
    harm_filter: Literal["always", "expressed"] = "always"
    center: bool = True
    unit: Literal["relative", "absolute"] = "relative"
    gate_scale: float = 0.05
    edit_scale: float | None = None
    positions: Literal["all", "generated"] = "all"
    strength: float = 1.0
    description_tokens: int = 40
    response_tokens: int = 80
    max_similarity: float = 0.99
    similarity: Literal["centered", "raw"] = "centered"
    max_repetition: float = 0.5
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "n_edit_layers", "description_tokens", "response_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("layers", "candidate_layers"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(int(x) for x in value)
                if not value:
                    raise ValueError(f"{name} is empty; pass at least one layer or None")
                object.__setattr__(self, name, value)
        _choice("layer_rule", self.layer_rule, LAYER_RULES)
        _choice("harm", self.harm, HARM_RULES)
        _choice("harm_filter", self.harm_filter, HARM_FILTERS)
        _choice("unit", self.unit, UNITS)
        _choice("positions", self.positions, POSITIONS)
        _choice("similarity", self.similarity, SIMILARITIES)
        _finite("gate_scale", self.gate_scale, positive=True)
        if self.edit_scale is not None:
            _finite("edit_scale", self.edit_scale, positive=True)
        _finite("strength", self.strength)
        _finite("temperature", self.temperature, positive=True)
        if not -1.0 <= _finite("max_similarity", self.max_similarity) <= 1.0:
            raise ValueError(f"max_similarity must be in [-1, 1], got {self.max_similarity}")
        if not 0.0 < _finite("max_repetition", self.max_repetition) <= 1.0:
            raise ValueError(f"max_repetition must be in (0, 1], got {self.max_repetition}")

    def settings(self) -> dict[str, Any]:
        """Every field as JSON-ready values (tuples become lists)."""
        out = asdict(self)
        for name in ("layers", "candidate_layers"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "AlignEZConfig":
        """The config back from :meth:`settings` (unknown keys raise)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown AlignEZ settings {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def _pair_settings(self) -> dict[str, Any]:
        """The settings that change the self-generated pairs (resume refuses others)."""
        return {
            "description_tokens": self.description_tokens,
            "response_tokens": self.response_tokens,
            "max_repetition": self.max_repetition,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "seed": self.seed,
            "prompts_version": PROMPTS_VERSION,
        }


# ---------------------------------------------------------------------------------------------
# Pure steps


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
    _choice("harm", harm, HARM_RULES)
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


def _heldout_separation(diff: Tensor) -> float:
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


def _cos(z: Tensor, dirs: Tensor) -> Tensor:
    """Cosine of ``z [n, d]`` with each row of ``dirs [k, d]``; 0 where either vector is zero."""
    zn = z.norm(dim=-1, keepdim=True)
    dn = dirs.norm(dim=-1)
    # Elementwise product and sum rather than a matmul, so a row's value (and the sign of a
    # near-zero cosine) does not depend on how many rows are filtered together.
    dots = (z.unsqueeze(-2) * dirs).sum(-1)
    denom = zn * dn
    return torch.where(denom > 0, dots / denom.clamp(min=1e-30), torch.zeros_like(dots))


def filter_directions(
    edit: "AlignEZEdit", residuals: Float[Tensor, "n layer d_model"]
) -> tuple[Bool[Tensor, "n layer k"], Bool[Tensor, "n layer k"]]:
    """Which help and harm directions each query keeps, from its last-token residuals ``Φ``.

    Args:
        edit: The fitted edit.
        residuals: ``Φ_l(q)`` at the edit's layers, in the order of ``edit.layers``.

    Returns:
        ``(help_mask, harm_mask)``: a help direction is kept iff ``cos(z, θ) ≤ 0`` and a harm
        direction per ``harm_filter`` (``z = Φ − μ`` when ``center``, else ``Φ``); zero
        directions are never kept.

    Example:
        >>> import torch
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 4).view(1, 2, 4), config=AlignEZConfig(center=False))
        >>> help_mask, harm_mask = filter_directions(edit, torch.tensor([[[-1.0, 2.0, 0.0, 0.0]]]))
        >>> help_mask.tolist(), harm_mask.tolist()
        ([[[True, False]]], [[[True, True]]])
    """
    n_layers, k, d = edit.help.shape
    if residuals.ndim != 3 or residuals.shape[1:] != (n_layers, d):
        raise ValueError(
            f"query residuals must be [n, {n_layers}, {d}] (one row per prompt at the edit's layers "
            f"{list(edit.layers)}), got {tuple(residuals.shape)}"
        )
    phi = residuals.detach().to("cpu", torch.float32)
    if edit.config.center:
        phi = phi - edit.query_center.unsqueeze(0)
    help_mask = torch.zeros(phi.shape[0], n_layers, k, dtype=torch.bool)
    harm_mask = torch.zeros_like(help_mask)
    for j in range(n_layers):
        valid_h = edit.help[j].norm(dim=-1) > 0
        valid_x = edit.harm[j].norm(dim=-1) > 0
        help_mask[:, j] = (_cos(phi[:, j], edit.help[j]) <= 0) & valid_h
        if edit.config.harm_filter == "always":
            harm_mask[:, j] = valid_x.expand(phi.shape[0], k)
        else:
            harm_mask[:, j] = (_cos(phi[:, j], edit.harm[j]) >= 0) & valid_x
    return help_mask, harm_mask


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


# ---------------------------------------------------------------------------------------------
# The edit


@dataclass(eq=False)
class AlignEZEdit:
    """A fitted AlignEZ edit: per-layer help/harm directions, centres and scales.

    Attributes:
        model_name: The model it was fitted on.
        layers: Edited block indices (``resid_post``), sorted.
        help: ``[layer, k, d_model]`` float32 unit help directions.
        harm: ``[layer, k, d_model]`` float32 unit harm directions.
        center: ``[layer, d_model]`` gate centre ``c_l`` (midpoint of the help and harm means).
        query_center: ``[layer, d_model]`` filter centre ``μ_l`` (mean last-token residual of
            the fit queries).
        resid_norm: ``[layer]`` mean norm ``n_l`` of the answer embeddings.
        config: The settings it was fitted with (they also say how to apply it).
        stats: Fit statistics: ``n_queries``, ``n_pairs`` (used), ``dropped`` (reason -> count),
            ``pairs`` (per generated pair: query ``index``, embedding ``similarity``, ``used``),
            ``candidate_layers``, ``layer_rule`` and ``per_layer`` (hook name -> ``resid_norm``,
            ``difference``, ``separation``, ``heldout_separation``, ``explained``,
            ``singular_values``).
        n_model_layers: Blocks of the model it was fitted on (0: unknown).
        model_fingerprint: Weight fingerprint of that model (empty: unknown).
    """

    model_name: str
    layers: tuple[int, ...]
    help: Float[Tensor, "layer k d_model"]
    harm: Float[Tensor, "layer k d_model"]
    center: Float[Tensor, "layer d_model"]
    query_center: Float[Tensor, "layer d_model"]
    resid_norm: Float[Tensor, " layer"]
    config: AlignEZConfig = field(default_factory=AlignEZConfig)
    stats: dict[str, Any] = field(default_factory=dict)
    n_model_layers: int = 0
    model_fingerprint: str = ""

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if len(self.layers) != self.help.shape[0] or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"layers {list(self.layers)} must be distinct, sorted, one per row of help"
            )
        for name in ("help", "harm", "center", "query_center", "resid_norm"):
            t = getattr(self, name).detach().to("cpu", torch.float32).contiguous()
            if not torch.isfinite(t).all():
                raise ValueError(f"AlignEZ {name} holds NaN or infinite values")
            setattr(self, name, t)
        if self.help.shape[1] != self.config.k:
            raise ValueError(
                f"help holds {self.help.shape[1]} directions per layer but config.k={self.config.k}"
            )

    @classmethod
    def synthetic(
        cls,
        help: Float[Tensor, "layer k d_model"],
        *,
        layers: Sequence[int] | None = None,
        harm: Float[Tensor, "layer k d_model"] | None = None,
        resid_norm: float = 1.0,
        config: AlignEZConfig | None = None,
    ) -> "AlignEZEdit":
        """An edit from given directions (zero centres), for experiments and tests.

        Args:
            help: Help directions (unit rows, or zero rows for unused slots).
            layers: The layers they belong to (default ``0..layer-1``).
            harm: Harm directions (default: the mirror ``-help``).
            resid_norm: ``n_l`` for every layer (scales with ``unit="relative"``).
            config: Settings (``k`` is taken from ``help``).

        Example:
            >>> import torch
            >>> AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
            AlignEZEdit(model=synthetic, layers=[1], k=2, harm=mirror, strength=1.0)
        """
        n_layers, k, d = help.shape
        config = config or AlignEZConfig(k=k)
        if config.k != k:
            config = replace(config, k=k)
        return cls(
            model_name="synthetic",
            layers=tuple(layers) if layers is not None else tuple(range(n_layers)),
            help=help,
            harm=harm if harm is not None else -help,
            center=torch.zeros(n_layers, d),
            query_center=torch.zeros(n_layers, d),
            resid_norm=torch.full((n_layers,), float(resid_norm)),
            config=config,
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AlignEZEdit(model={self.model_name}, layers={list(self.layers)}, k={c.k}, "
            f"harm={c.harm}, strength={c.strength})"
        )

    @property
    def d_model(self) -> int:
        return int(self.help.shape[-1])

    @property
    def hook_names(self) -> list[str]:
        return [resid_hook_name(layer, SITE) for layer in self.layers]

    def tau(self) -> Float[Tensor, " layer"]:
        """Gate temperature ``τ_l`` per edited layer."""
        base = (
            self.resid_norm if self.config.unit == "relative" else torch.ones_like(self.resid_norm)
        )
        return (self.config.gate_scale * base).clamp(min=1e-12)

    def push(self) -> Float[Tensor, " layer"]:
        """Push ``r_l`` per edited layer."""
        scale = (
            self.config.edit_scale if self.config.edit_scale is not None else self.config.gate_scale
        )
        base = (
            self.resid_norm if self.config.unit == "relative" else torch.ones_like(self.resid_norm)
        )
        return scale * base

    def save(self, path: str | Path) -> Path:
        """Write ``alignez.safetensors`` (tensors) and ``alignez.json`` (the rest) into directory ``path``."""
        from .models import package_versions

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "help": self.help,
            "harm": self.harm,
            "center": self.center,
            "query_center": self.query_center,
            "resid_norm": self.resid_norm,
        }
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "model_name": self.model_name,
            "site": SITE,
            "layers": ",".join(map(str, self.layers)),
        }
        tmp = out / (WEIGHTS_FILE + ".tmp")
        tmp.write_bytes(_safetensors_bytes(tensors, header))
        tmp.replace(out / WEIGHTS_FILE)
        tau, push = self.tau(), self.push()
        cfg = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "d_model": self.d_model,
            "n_layers": self.n_model_layers,
            "site": SITE,
            "layers": list(self.layers),
            "hook_names": self.hook_names,
            "k": self.config.k,
            "config": self.config.settings(),
            "stats": self.stats,
            "sign_convention": SIGN_CONVENTION,
            "prompts": {
                "describe_help": DESCRIBE_HELP,
                "describe_harm": DESCRIBE_HARM,
                "respond_system": RESPOND_SYSTEM,
                "version": PROMPTS_VERSION,
            },
            "per_layer": {
                name: {
                    "tau": float(tau[j]),
                    "push": float(push[j]),
                    "resid_norm": float(self.resid_norm[j]),
                }
                for j, name in enumerate(self.hook_names)
            },
            "versions": package_versions(),
        }
        write_json(cfg, out / CFG_FILE)
        return out


def load_alignez(
    path: str | Path, model: LensModel | None = None, *, check_fingerprint: bool = True
) -> AlignEZEdit:
    """Read an edit written by :meth:`AlignEZEdit.save` (nothing is unpickled).

    Args:
        path: The directory (or one of its two files).
        model: If given, the edit must fit it (:func:`check_edit`).
        check_fingerprint: With ``model``, also require bit-identical weights.

    Raises:
        ValueError: Missing or damaged files, another format or version, an edit for another model.

    Example:
        >>> import tempfile, torch
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16))
        >>> back = load_alignez(edit.save(tempfile.mkdtemp()))
        >>> torch.equal(back.help, edit.help), back.config == edit.config
        (True, True)
    """
    from safetensors import safe_open

    cfg_path, weights_path, cfg = read_saved_config(
        path, cfg_file=CFG_FILE, weights_file=WEIGHTS_FILE, fmt=FORMAT, version=FORMAT_VERSION,
        what="AlignEZ edit", fix="Re-fit the edit.", missing_hint=" (write one with 'icon2-lens alignez fit')")
    names = ("help", "harm", "center", "query_center", "resid_norm")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            if set(f.keys()) != set(names):
                raise ValueError(
                    f"{weights_path} holds {sorted(f.keys())}, expected {sorted(names)}"
                )
            tensors = {n: f.get_tensor(n).to(torch.float32) for n in names}
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error type on damaged files
        raise ValueError(f"cannot read {weights_path}: {e}") from e
    try:
        edit = AlignEZEdit(
            model_name=str(cfg["model_name"]),
            layers=tuple(int(x) for x in cfg["layers"]),
            config=AlignEZConfig.from_settings(cfg["config"]),
            stats=dict(cfg.get("stats") or {}),
            n_model_layers=int(cfg.get("n_layers") or 0),
            model_fingerprint=str(cfg.get("model_fingerprint") or ""),
            **tensors,
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path} is incomplete or does not match {WEIGHTS_FILE}: {e}") from e
    if model is not None:
        check_edit(edit, model, check_fingerprint=check_fingerprint, source=str(cfg_path.parent))
    return edit


def check_edit(
    edit: AlignEZEdit, model: LensModel, *, check_fingerprint: bool = True, source: str = ""
) -> None:
    """Raise a ``ValueError`` naming the fix unless ``edit`` can be applied to ``model``."""
    where = f" ({source})" if source else ""
    d_model, n_layers = model.cfg.d_model, model.cfg.n_layers
    if edit.d_model != d_model:
        raise ValueError(
            f"the AlignEZ edit{where} was fitted on {edit.model_name!r} with d_model={edit.d_model}, but this "
            f"model's d_model is {d_model}: fit an edit for this model ('icon2-lens alignez fit' or fit_alignez)"
        )
    if max(edit.layers) >= n_layers:
        raise ValueError(
            f"the AlignEZ edit{where} edits layer {max(edit.layers)} but this model has {n_layers} layers "
            f"(0..{n_layers - 1}); it was fitted on {edit.model_name!r}: fit an edit for this model"
        )
    if check_fingerprint and edit.model_fingerprint:
        from .models import model_fingerprint

        actual = model_fingerprint(model)
        if actual != edit.model_fingerprint:
            raise ValueError(
                f"the AlignEZ edit{where} was fitted on {edit.model_name!r} (weights fingerprint "
                f"{edit.model_fingerprint}) but this model's weights differ ({actual}): fit an edit for this "
                "model, or pass check_fingerprint=False to transfer it on purpose"
            )


# ---------------------------------------------------------------------------------------------
# Applying the edit


class _Gate(SteeringAdder):
    """The bound edit of one layer for one batch: callable on the residual tensor alone.

    Subclasses :class:`~icon2_lens.steer.SteeringAdder` only because the bridge path of
    :func:`~icon2_lens.fast.attached` wraps editors with ``steer._tl_hook``, whose parameter is
    annotated ``SteeringAdder`` (a runtime type checker would reject any other callable); none
    of the parent's state is used.
    """

    def __init__(
        self,
        edit: AlignEZEdit,
        j: int,
        help_mask: Tensor,
        harm_mask: Tensor,
        strength: float,
        positions: str,
        prompt_len: int,
        rows: RowSelection,
    ) -> None:
        self.help_dirs, self.harm_dirs = edit.help[j], edit.harm[j]
        self.center = edit.center[j] if edit.config.center else torch.zeros(edit.d_model)
        self.tau, self.push = float(edit.tau()[j]), float(edit.push()[j])
        self.help_mask, self.harm_mask = help_mask.float(), harm_mask.float()
        self.strength, self.positions, self.prompt_len, self.rows = (
            strength,
            positions,
            prompt_len,
            rows,
        )
        self.calls = 0

    def __call__(self, resid: Tensor) -> Tensor:
        hm, xm = self.help_mask, self.harm_mask
        if self.rows.index is not None:
            hm, xm = hm[self.rows.index], xm[self.rows.index]
        if hm.shape[0] != resid.shape[0]:
            raise ValueError(
                f"the AlignEZ edit holds masks for {hm.shape[0]} rows but the batch has "
                f"{resid.shape[0]}: pass one query per batch row"
            )
        first = self.calls == 0
        self.calls += 1
        edited = gated_edit(
            resid,
            self.help_dirs,
            self.harm_dirs,
            hm,
            xm,
            center=self.center,
            tau=self.tau,
            push=self.push,
            strength=self.strength,
        )
        if self.positions == "all" or (resid.shape[1] == 1 and not first):
            return edited
        # Full-sequence call: edit from the last prompt position on (its output is the first
        # generated token, which must be edited too).
        keep = torch.zeros(resid.shape[1], 1, dtype=torch.bool, device=resid.device)
        keep[max(0, self.prompt_len - 1) :] = True
        return torch.where(keep, edited, resid)


def _strength(edit: AlignEZEdit, strength: float | None) -> float:
    s = edit.config.strength if strength is None else strength
    return _finite("strength", s)


class AlignEZEditor:
    """A :class:`~icon2_lens.generate.ResidualEditor` applying an AlignEZ edit with per-prompt masks.

    The prompts' last-token residuals ``Φ`` are read once here (or passed as ``query_residuals``)
    and turned into each prompt's kept-direction masks (:func:`filter_directions`); :meth:`bind`
    slices them for a batch, and the hooks follow :class:`~icon2_lens.steer.RowSelection` as
    rows finish. With strength 0 it has no hook names and binds nothing.

    Args:
        model: The bridge.
        edit: The fitted edit (checked against ``model``).
        prompts: Rendered prompts, in the order :func:`~icon2_lens.generate.generate` gets them.
        strength: ``s``; ``None`` for ``edit.config.strength``.
        query_residuals: ``[n, layer, d_model]`` ``Φ`` at ``edit.layers`` instead of ``prompts``.
        check_fingerprint: Require the edit's model to have bit-identical weights.
        batch_size: Prompts per forward pass when reading ``Φ``.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> from icon2_lens.chat import render_chat
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
        >>> editor = AlignEZEditor(model, edit, [render_chat(model.tokenizer, "tell me a story")])
        >>> editor.hook_names, editor.help_kept.shape
        (('blocks.1.hook_resid_post',), torch.Size([1]))
    """

    def __init__(
        self,
        model: LensModel,
        edit: AlignEZEdit,
        prompts: Sequence[str] | None = None,
        *,
        strength: float | None = None,
        query_residuals: Float[Tensor, "n layer d_model"] | None = None,
        check_fingerprint: bool = True,
        batch_size: int = 16,
    ) -> None:
        self.strength = _strength(edit, strength)
        check_edit(edit, model, check_fingerprint=check_fingerprint)
        self.edit = edit
        if (prompts is None) == (query_residuals is None):
            raise ValueError("pass either prompts or query_residuals")
        if prompts is not None and len(prompts) == 0:
            raise ValueError("no prompts: pass at least one")
        n = len(prompts) if prompts is not None else query_residuals.shape[0]
        n_layers, k, _ = edit.help.shape
        self.hook_names: tuple[str, ...] = ()
        self.help_mask = torch.zeros(n, n_layers, k, dtype=torch.bool)
        self.harm_mask = torch.zeros_like(self.help_mask)
        if self.strength == 0.0:
            return  # nothing attached: the model runs exactly as without the editor
        names = edit.hook_names
        validate_hook_names(model, names)
        if query_residuals is None:
            query_residuals = collect_resid(
                model,
                list(prompts),
                layers=list(edit.layers),
                site=SITE,
                batch_size=batch_size,
                progress=False,
                backend="fast",
                desc="query residuals",
            )
        self.help_mask, self.harm_mask = filter_directions(edit, query_residuals)
        self.hook_names = tuple(names)

    @property
    def help_kept(self) -> Tensor:
        """``[n]`` kept help directions per prompt, summed over layers."""
        return self.help_mask.sum(dim=(1, 2))

    @property
    def harm_kept(self) -> Tensor:
        """``[n]`` kept harm directions per prompt, summed over layers."""
        return self.harm_mask.sum(dim=(1, 2))

    def bind(
        self, rows: RowSelection, row_ids: Sequence[int], prompt_len: int
    ) -> list[tuple[str, Any]]:
        """One gate per edited layer for the batch of prompts ``row_ids`` (see ``ResidualEditor``)."""
        return self._bind(rows, row_ids, prompt_len, self.edit.config.positions)

    def _bind(self, rows: RowSelection, row_ids: Sequence[int], prompt_len: int, positions: str):
        if not self.hook_names:
            return []
        ids = torch.as_tensor(list(row_ids), dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.help_mask.shape[0]):
            raise ValueError(
                f"row ids {ids.tolist()} are outside the editor's {self.help_mask.shape[0]} prompts"
            )
        return [
            (
                name,
                _Gate(
                    self.edit,
                    j,
                    self.help_mask[ids, j],
                    self.harm_mask[ids, j],
                    self.strength,
                    positions,
                    prompt_len,
                    rows,
                ),
            )
            for j, name in enumerate(self.hook_names)
        ]


@contextmanager
def alignez(
    model: LensModel,
    edit: AlignEZEdit,
    queries: Sequence[str] | Float[Tensor, "n layer d_model"],
    *,
    strength: float | None = None,
) -> Iterator[AlignEZEditor]:
    """Context manager: forward passes of the bridge edited inside the block, untouched after.

    Row ``i`` of every batch is edited with the masks of query ``i`` (so each batch must have
    one row per query), at every position of every forward pass. Hooks are built before they
    are attached and removed on exit, also when the block raises.

    Args:
        model: The bridge.
        edit: The fitted edit.
        queries: Rendered prompts (their ``Φ`` is read here) or ``[n, layer, d_model]`` ``Φ``.
        strength: ``s``; ``None`` for ``edit.config.strength``.

    Example:
        >>> import torch
        >>> from icon2_lens.testing import tiny_model
        >>> from icon2_lens.chat import render_chat
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1], resid_norm=50.0)
        >>> ids = torch.tensor([[1, 5, 6, 7]])
        >>> with alignez(model, edit, torch.randn(1, 1, 16), strength=0.0):
        ...     same = model(ids)
        >>> torch.equal(same, model(ids))
        True
    """
    if isinstance(queries, Tensor):
        editor = AlignEZEditor(model, edit, query_residuals=queries, strength=strength)
    else:
        editor = AlignEZEditor(model, edit, list(queries), strength=strength)
    n = editor.help_mask.shape[0]
    hooks = [
        (name, _tl_hook(gate)) for name, gate in editor._bind(RowSelection(), range(n), 0, "all")
    ]
    with model.hooks(fwd_hooks=hooks):
        yield editor


def generate_alignez(
    model: LensModel,
    instructions: Sequence[str],
    edit: AlignEZEdit,
    decoding: Decoding | None = None,
    *,
    strength: float | None = None,
    batch_size: int = 16,
    progress: bool = False,
    backend: str = "auto",
) -> list[Generation]:
    """Answer each instruction (wrapped by the chat template) with the AlignEZ edit applied.

    Args:
        model: The bridge.
        instructions: User instructions.
        edit: The fitted edit.
        decoding: Decoding settings (greedy, 128 new tokens by default).
        strength: ``s``; ``None`` for ``edit.config.strength``; 0 gives exactly the unedited text.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.
        backend: Generation backend (``auto``, ``fast``, ``bridge``).

    Returns:
        One :class:`~icon2_lens.generate.Generation` per instruction, in order.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
        >>> out = generate_alignez(model, ["tell me a story"], edit, Decoding(max_new_tokens=4))
        >>> len(out), len(out[0].token_ids) <= 4
        (1, True)
    """
    if len(instructions) == 0:
        raise ValueError("no instructions to answer")
    tok = model.tokenizer
    prompts = [render_chat(tok, d) for d in instructions]
    editor = AlignEZEditor(model, edit, prompts, strength=strength, batch_size=batch_size)
    return generate(
        model,
        prompts,
        decoding,
        batch_size=batch_size,
        progress=progress,
        backend=backend,
        editors=[editor],
    )


# ---------------------------------------------------------------------------------------------
# Fitting


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    return ""


def _generate(
    model: LensModel, prompts: list[str], decoding: Decoding, seeds: list[int], batch_size: int
) -> list[Generation]:
    """Generate in batches with one fixed seed per text, so a text does not depend on its batch."""
    rows = encode_prompts(model.tokenizer, prompts, max_len=getattr(model.cfg, "n_ctx", None))
    out: list[Generation] = []
    for s in range(0, len(rows), batch_size):
        out.extend(
            generate_rows(
                model, rows[s : s + batch_size], decoding, row_seeds=seeds[s : s + batch_size]
            )
        )
    return out


def _check_resume(path: Path, settings: dict[str, Any]) -> None:
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{path.parent} holds AlignEZ pairs made with other settings (differences in: "
                f"{', '.join(diff)}); choose another --out or delete {path.parent / PAIRS_FILE}"
            )
    write_json(settings, path)


def generate_self_pairs(
    model: LensModel,
    queries: Sequence[str],
    config: AlignEZConfig | None = None,
    *,
    progress: bool = True,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Step 1: per query, a good and a bad description and one answer following each (greedy).

    Args:
        model: The bridge (its tokenizer needs a chat template).
        queries: Fit queries (user instructions).
        config: Budgets and drop rules (:class:`AlignEZConfig`).
        progress: Show a progress bar.
        out: Directory for ``pairs.jsonl`` (one record per query, appended after every batch)
            and ``pairs_settings.json``; a re-run skips the queries already written and refuses
            a directory written with other settings.

    Returns:
        One record per query, in order: ``index``, ``query``, ``help_description``,
        ``harm_description``, ``help_response``, ``harm_response``, token counts and ``dropped``
        (``None``, or why: ``empty_description``, ``help_empty``, ``harm_repetition``,
        ``identical``, ...).

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> cfg = AlignEZConfig(description_tokens=4, response_tokens=4, do_sample=True)
        >>> recs = generate_self_pairs(tiny_model(seed=1), ["tell me a story"], cfg, progress=False)
        >>> sorted(recs[0])[:4]
        ['dropped', 'harm_description', 'harm_response', 'harm_tokens']
    """
    from .models import model_fingerprint

    config = config or AlignEZConfig()
    queries = [str(q) for q in queries]
    if not queries or any(not q.strip() for q in queries):
        raise ValueError(
            "AlignEZ needs at least one non-empty fit query (got none, or an empty one)"
        )
    tok = model.tokenizer
    done: dict[int, dict[str, Any]] = {}
    pairs_path = None
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **config._pair_settings(),
            "model_name": str(model.cfg.model_name),
            "model_fingerprint": model_fingerprint(model),
        }
        _check_resume(out_dir / PAIRS_SETTINGS, settings)
        pairs_path = out_dir / PAIRS_FILE
        for rec in read_jsonl(pairs_path, repair=True):
            i = int(rec["index"])
            if i >= len(queries) or rec["query"] != queries[i]:
                raise ValueError(
                    f"{pairs_path} record {i} is for another query list ({rec['query'][:40]!r}); "
                    "choose another --out or delete the file"
                )
            done[i] = rec
        if done:
            log.info(
                "resuming AlignEZ pairs: %d of %d queries already in %s",
                len(done),
                len(queries),
                pairs_path,
            )
    todo = [i for i in range(len(queries)) if i not in done]
    describe = Decoding(
        max_new_tokens=config.description_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        seed=config.seed,
    )
    respond = Decoding(
        max_new_tokens=config.response_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        seed=config.seed,
    )
    chunks = [todo[s : s + config.batch_size] for s in range(0, len(todo), config.batch_size)]
    for chunk in tqdm(chunks, desc="AlignEZ pairs", disable=not progress, unit="batch"):
        qs = [queries[i] for i in chunk]
        n = len(qs)
        ask = [render_chat(tok, DESCRIBE_HELP.format(query=q)) for q in qs]
        ask += [render_chat(tok, DESCRIBE_HARM.format(query=q)) for q in qs]
        seeds = [4 * i for i in chunk] + [4 * i + 1 for i in chunk]
        descs = [
            _first_line(g.text) for g in _generate(model, ask, describe, seeds, config.batch_size)
        ]
        usable = [j for j in range(n) if descs[j] and descs[n + j]]
        answers: dict[tuple[int, str], Generation] = {}
        if usable:
            prompts = [
                render_chat(tok, qs[j], system=RESPOND_SYSTEM.format(description=descs[j]))
                for j in usable
            ]
            prompts += [
                render_chat(tok, qs[j], system=RESPOND_SYSTEM.format(description=descs[n + j]))
                for j in usable
            ]
            seeds = [4 * chunk[j] + 2 for j in usable] + [4 * chunk[j] + 3 for j in usable]
            gens = _generate(model, prompts, respond, seeds, config.batch_size)
            for a, j in enumerate(usable):
                answers[j, "help"], answers[j, "harm"] = gens[a], gens[len(usable) + a]
        new = []
        for j, i in enumerate(chunk):
            rec: dict[str, Any] = {
                "index": i,
                "query": qs[j],
                "help_description": descs[j],
                "harm_description": descs[n + j],
                "help_response": "",
                "harm_response": "",
                "help_tokens": 0,
                "harm_tokens": 0,
                "dropped": None,
            }
            if j not in usable:
                rec["dropped"] = "empty_description"
            else:
                for side in ("help", "harm"):
                    g = answers[j, side]
                    rec[f"{side}_response"], rec[f"{side}_tokens"] = g.text, len(g.token_ids)
                    why = degeneracy(g.text, g.token_ids, max_repetition=config.max_repetition)
                    if why and rec["dropped"] is None:
                        rec["dropped"] = f"{side}_{why}"
                if (
                    rec["dropped"] is None
                    and answers[j, "help"].token_ids == answers[j, "harm"].token_ids
                ):
                    rec["dropped"] = "identical"
            new.append(rec)
            done[i] = rec
        if pairs_path is not None:
            append_jsonl(pairs_path, new)
    return [done[i] for i in range(len(queries))]


def _pair_similarity(help_emb: Tensor, harm_emb: Tensor, mode: str) -> Tensor:
    """``[n_pairs]`` cosine of the two embeddings of each pair, averaged over layers."""
    a, b = help_emb.double(), harm_emb.double()
    if mode == "centered":
        mean = torch.cat([a, b]).mean(0, keepdim=True)
        a, b = a - mean, b - mean
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    cos = torch.where(den > 0, num / den.clamp(min=1e-300), torch.ones_like(num))
    return cos.mean(-1).float()


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _default_candidates(n_layers: int) -> list[int]:
    q = n_layers // 4
    return list(range(q, n_layers - q)) or list(range(n_layers))


def fit_alignez(
    model: LensModel,
    queries: Sequence[str],
    config: AlignEZConfig | None = None,
    *,
    progress: bool = True,
    out: str | Path | None = None,
) -> AlignEZEdit:
    """Fit an AlignEZ edit from the model's own answers to ``queries`` (steps 1–4 of the module doc).

    Args:
        model: The bridge (never modified).
        queries: Fit queries (user instructions).
        config: Settings (:class:`AlignEZConfig`).
        progress: Show progress bars.
        out: Directory for the self-generated pairs (``pairs.jsonl``, resumable, see
            :func:`generate_self_pairs`) and, at the end, the edit itself (:meth:`AlignEZEdit.save`).

    Returns:
        The fitted :class:`AlignEZEdit`.

    Raises:
        ValueError: No or empty queries, layers outside the model, or no usable pair.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> cfg = AlignEZConfig(description_tokens=4, response_tokens=6, n_edit_layers=1, do_sample=True)
        >>> edit = fit_alignez(tiny_model(seed=1), ["tell me a story", "help me fix my code"], cfg,
        ...                    progress=False)
        >>> edit.help.shape, len(edit.layers)
        (torch.Size([1, 2, 16]), 1)
    """
    from .models import model_fingerprint

    config = config or AlignEZConfig()
    n_layers = model.cfg.n_layers
    explicit = (
        normalize_layers(list(config.layers), n_layers) if config.layers is not None else None
    )
    candidates = (
        normalize_layers(list(config.candidate_layers), n_layers)
        if config.candidate_layers is not None
        else _default_candidates(n_layers)
    )
    records = generate_self_pairs(model, queries, config, progress=progress, out=out)
    counts = Counter(r["dropped"] or "kept" for r in records)
    kept = [r for r in records if r["dropped"] is None]
    if not kept:
        raise ValueError(
            f"no usable AlignEZ pair among {len(records)} queries (dropped: {dict(counts)}): use more "
            "queries, larger description_tokens/response_tokens, or a chat model that follows instructions"
        )
    read_layers = list(range(n_layers))
    texts = [r["query"] for r in kept] * 2
    answers = [r["help_response"] for r in kept] + [r["harm_response"] for r in kept]
    res = read_responses(
        model,
        texts,
        answers,
        layers=read_layers,
        site=SITE,
        read="mean",
        batch_size=config.batch_size,
        nll=False,
        progress=progress,
    )
    n = len(kept)
    help_all, harm_all = res.readings[:n], res.readings[n:]
    sim = _pair_similarity(help_all, harm_all, config.similarity)
    use = (sim <= config.max_similarity).nonzero().flatten()
    n_similar = n - int(use.numel())
    if n_similar:
        counts["similar"] = n_similar
        counts["kept"] -= n_similar
    if use.numel() == 0:
        raise ValueError(
            f"all {n} AlignEZ pairs have embedding similarity above max_similarity={config.max_similarity} "
            f"(min {float(sim.min()):.4f}): raise max_similarity or use queries whose answers differ more"
        )
    help_emb, harm_emb = help_all[use], harm_all[use]
    norms = torch.cat([help_emb, harm_emb]).norm(dim=-1).mean(0)  # [layer]
    subspaces, per_layer = {}, {}
    for layer in read_layers:
        diff = help_emb[:, layer] - harm_emb[:, layer]
        entry: dict[str, Any] = {
            "resid_norm": float(norms[layer]),
            "difference": float(diff.norm(dim=-1).mean() / norms[layer].clamp(min=1e-12)),
            "heldout_separation": _none_if_nan(_heldout_separation(diff)),
        }
        if float(diff.abs().max()) > 0:
            sub = fit_subspace(help_emb[:, layer], harm_emb[:, layer], config.k, harm=config.harm)
            subspaces[layer] = sub
            entry.update(
                separation=sub.separation,
                explained=sub.explained,
                singular_values=[float(x) for x in sub.singular_values],
            )
        per_layer[resid_hook_name(layer, SITE)] = entry
    if explicit is not None:
        chosen = explicit
    else:
        pool = [layer for layer in candidates if layer in subspaces]
        if not pool:
            raise ValueError(
                f"the help and harm embeddings are identical at every candidate layer {candidates}"
            )
        rule = config.layer_rule
        if rule == "separation" and use.numel() < 2:
            log.warning(
                "layer_rule='separation' needs at least 2 pairs; choosing layers by 'difference'"
            )
            rule = "difference"

        def score(layer: int) -> tuple[float, float]:
            e = per_layer[resid_hook_name(layer, SITE)]
            if rule == "separation":
                return (
                    e["heldout_separation"] if e["heldout_separation"] is not None else 0.0,
                    e["difference"],
                )
            return (e["difference"], 0.0)

        chosen = sorted(sorted(pool, key=lambda x: score(x), reverse=True)[: config.n_edit_layers])
    missing = [layer for layer in chosen if layer not in subspaces]
    if missing:
        raise ValueError(
            f"layers {missing} show no help/harm difference at all; choose other layers"
        )
    idx = torch.tensor(chosen)
    center = (
        0.5 * (help_emb[:, idx].mean(0) + harm_emb[:, idx].mean(0))
        if config.center
        else torch.zeros(len(chosen), model.cfg.d_model)
    )
    if config.center:
        phi = collect_resid(
            model,
            [render_chat(model.tokenizer, q) for q in queries],
            layers=chosen,
            site=SITE,
            batch_size=config.batch_size,
            progress=False,
            backend="fast",
        )
        query_center = phi.mean(0)
    else:
        query_center = torch.zeros(len(chosen), model.cfg.d_model)
    stats = {
        "n_queries": len(records),
        "n_pairs": int(use.numel()),
        "dropped": {k: v for k, v in counts.items() if k != "kept"},
        "pairs": [
            {
                "index": r["index"],
                "similarity": float(sim[j]),
                "used": bool(sim[j] <= config.max_similarity),
            }
            for j, r in enumerate(kept)
        ],
        "candidate_layers": candidates,
        "layer_rule": config.layer_rule if explicit is None else "explicit",
        "per_layer": per_layer,
    }
    edit = AlignEZEdit(
        model_name=str(model.cfg.model_name),
        layers=tuple(chosen),
        help=torch.stack([subspaces[x].help for x in chosen]),
        harm=torch.stack([subspaces[x].harm for x in chosen]),
        center=center,
        query_center=query_center,
        resid_norm=norms[idx],
        config=config,
        stats=stats,
        n_model_layers=n_layers,
        model_fingerprint=model_fingerprint(model),
    )
    log.info(
        "AlignEZ: %d pairs of %d queries (dropped %s), layers %s",
        stats["n_pairs"],
        len(records),
        stats["dropped"],
        chosen,
    )
    if out is not None:
        edit.save(out)
    return edit


# ---------------------------------------------------------------------------------------------
# Command line


def add_alignez_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``icon2-lens alignez {fit,generate}`` to ``parser`` (a subcommand parser).

    Example:
        >>> p = add_alignez_arguments(argparse.ArgumentParser())
        >>> a = p.parse_args(["fit", "--queries", "builtin", "--out", "o"])
        >>> a.alignez_command, a.k, a.strength
        ('fit', 2, 1.0)
    """
    d = AlignEZConfig()
    sub = parser.add_subparsers(dest="alignez_command", required=True)
    fit = sub.add_parser(
        "fit",
        help="self-generate preference pairs and fit an AlignEZ edit",
        description="Good/bad descriptions → conditioned answers → per-layer SVD of the "
        "help−harm embeddings → an edit saved to --out (pairs.jsonl resumes).",
    )
    fit.add_argument(
        "--queries",
        required=True,
        help="fit queries: .txt (one per line) or .jsonl ('instruction'), or 'builtin' (train split)",
    )
    fit.add_argument("--n", type=int, default=None, help="use only the first N queries")
    fit.add_argument(
        "--out",
        required=True,
        help="output directory: alignez.safetensors, alignez.json, pairs.jsonl",
    )
    fit.add_argument(
        "--k", type=int, default=d.k, help="directions per layer (default %(default)s)"
    )
    fit.add_argument(
        "--n-layers", type=int, default=d.n_edit_layers, help="layers to edit (default %(default)s)"
    )
    fit.add_argument(
        "--layers", default=None, help="explicit layers such as '10-12' (default: chosen)"
    )
    fit.add_argument("--layer-rule", default=d.layer_rule, choices=LAYER_RULES)
    fit.add_argument(
        "--harm", default=d.harm, choices=HARM_RULES, help="harm directions (default %(default)s)"
    )
    fit.add_argument("--harm-filter", default=d.harm_filter, choices=HARM_FILTERS)
    fit.add_argument("--no-center", action="store_true", help="literal gates <x, θ> and cos(Φ, θ)")
    fit.add_argument("--unit", default=d.unit, choices=UNITS)
    fit.add_argument(
        "--gate-scale", type=float, default=d.gate_scale, help="τ (default %(default)s)"
    )
    fit.add_argument("--edit-scale", type=float, default=None, help="r (default: equal to τ)")
    fit.add_argument("--positions", default=d.positions, choices=POSITIONS)
    fit.add_argument(
        "--strength", type=float, default=d.strength, help="default strength (default %(default)s)"
    )
    fit.add_argument("--description-tokens", type=int, default=d.description_tokens)
    fit.add_argument("--response-tokens", type=int, default=d.response_tokens)
    fit.add_argument("--max-similarity", type=float, default=d.max_similarity)
    fit.add_argument(
        "--sample", action="store_true", help="seeded sampling instead of greedy decoding"
    )
    fit.add_argument("--temperature", type=float, default=d.temperature)
    fit.add_argument("--batch-size", type=int, default=d.batch_size)
    fit.add_argument("--seed", type=int, default=d.seed)
    gen = sub.add_parser("generate", help="answer instructions with an AlignEZ edit applied")
    gen.add_argument("--edit", required=True, help="directory written by 'icon2-lens alignez fit'")
    gen.add_argument(
        "--instructions",
        required=True,
        help=".txt or .jsonl instructions, or 'builtin' (held-out split)",
    )
    gen.add_argument("--n", type=int, default=None, help="use only the first N instructions")
    gen.add_argument("--out", required=True, help="answers, .jsonl")
    gen.add_argument("--strength", type=float, default=None, help="strength (default: the edit's)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--batch-size", type=int, default=16)
    for p in (fit, gen):
        p.add_argument(
            "--model",
            default=None,
            help="embedded model key (smollm2-135m [default], gemma3-270m), HF model directory or hub id",
        )
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _read_texts(spec: str, split: str, n: int | None) -> list[str]:
    from .instructions import load_instructions, read_instruction_file

    texts = load_instructions(split) if spec == "builtin" else read_instruction_file(spec)
    if n is not None:
        if n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
        texts = texts[:n]
    return texts


def cli_alignez(args: argparse.Namespace) -> int:
    """Run ``icon2-lens alignez fit|generate``: errors are logged and give exit code 2.

    Args:
        args: Parsed options of :func:`add_alignez_arguments`.

    Returns:
        0 on success, 2 on a user error (bad file, model, edit or option).
    """
    from .hooks import parse_layers
    from .models import load_model

    try:
        if args.alignez_command == "fit":
            queries = _read_texts(args.queries, "train", args.n)
            model = load_model(args.model)
            layers = parse_layers(args.layers, model.cfg.n_layers) if args.layers else None
            config = AlignEZConfig(
                k=args.k,
                n_edit_layers=args.n_layers,
                layers=layers,
                layer_rule=args.layer_rule,
                harm=args.harm,
                harm_filter=args.harm_filter,
                center=not args.no_center,
                unit=args.unit,
                gate_scale=args.gate_scale,
                edit_scale=args.edit_scale,
                positions=args.positions,
                strength=args.strength,
                description_tokens=args.description_tokens,
                response_tokens=args.response_tokens,
                max_similarity=args.max_similarity,
                do_sample=args.sample,
                temperature=args.temperature,
                batch_size=args.batch_size,
                seed=args.seed,
            )
            with torch.no_grad():
                edit = fit_alignez(
                    model, queries, config, progress=not args.no_progress, out=args.out
                )
            log.info(
                "AlignEZ edit %r: %d pairs, dropped %s → %s",
                edit,
                edit.stats["n_pairs"],
                edit.stats["dropped"],
                Path(args.out).resolve(),
            )
            return 0
        if args.alignez_command == "generate":
            out = Path(args.out)
            if out.suffix != ".jsonl":
                raise ValueError(f"--out must be a .jsonl file, got {out}")
            instructions = _read_texts(args.instructions, "heldout", args.n)
            model = load_model(args.model)
            edit = load_alignez(args.edit, model)
            prompts = [render_chat(model.tokenizer, d) for d in instructions]
            with torch.no_grad():
                editor = AlignEZEditor(
                    model, edit, prompts, strength=args.strength, batch_size=args.batch_size
                )
                gens = generate(
                    model,
                    prompts,
                    Decoding(max_new_tokens=args.max_new_tokens),
                    batch_size=args.batch_size,
                    progress=not args.no_progress,
                    editors=[editor],
                )
            rows = [
                {
                    "index": i,
                    "instruction": d,
                    "response": g.text,
                    "finished": g.finished,
                    "n_tokens": len(g.token_ids),
                    "alignez_strength": editor.strength,
                    "alignez_help_kept": int(editor.help_kept[i]),
                    "alignez_harm_kept": int(editor.harm_kept[i]),
                    "alignez_layers": list(edit.layers),
                    "alignez_edit": str(Path(args.edit).resolve()),
                }
                for i, (d, g) in enumerate(zip(instructions, gens))
            ]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
            )
            tmp.replace(out)
            log.info(
                "%d AlignEZ answers (strength %s) → %s", len(rows), editor.strength, out.resolve()
            )
            return 0
        raise ValueError(f"unknown alignez command {args.alignez_command!r}; use fit or generate")
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        log.error("icon2-lens alignez: error: %s", e)
        return 2
