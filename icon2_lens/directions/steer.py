"""Steering: add ``γ · u_l`` to the residual stream at every layer ``l`` of an interval.

Units of γ (``unit``):

``relative`` (default)
    γ is a fraction of the layer's mean last-token residual norm (``mean_resid_norm`` recorded at
    extraction), so one γ means the same push at every depth: the residual norm grows about
    25-fold from the first to the last block of the embedded model, and a unit vector scaled by a
    raw 0.1 would be invisible in late layers and large in early ones.
``absolute``
    γ multiplies the unit vector as is (Icon²'s Eq. 4 read literally).

Positions (``positions``):

``all`` (default)
    Every position of every forward call: the prompt and each generated token. Correct with and
    without a KV cache, since every call steers whatever it computes.
``generated``
    Only the last prompt position (its output is the first generated token, which must be
    steered too) and the positions after it. ``prompt_len`` is the (left-padded) prompt length;
    a KV-cached step (one position per call after the first) is always steered, a full re-run
    steers positions ``>= prompt_len - 1``.

Example:
    >>> import torch
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.directions.set import DirectionSet
    >>> model = tiny_model()
    >>> ds = DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=torch.eye(3, 16), method="mean_diff",
    ...                   stats=tuple({"mean_resid_norm": 4.0} for _ in range(3)))
    >>> ids = torch.tensor([[1, 5, 6, 7]])
    >>> with steer(model, SteeringSpec(directions=ds, gamma=0.0)):
    ...     zero = model(ids)
    >>> torch.equal(zero, model(ids))
    True
"""

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from icon2_lens._types import LensModel
from icon2_lens.model.hooks import (
    POSITIONS,
    RowSelection,
    as_tl_hook,
    edit_start,
    validate_hook_names,
)

from .set import DirectionSet, check_compatible

__all__ = [
    "SteeringSpec",
    "SteeringAdder",
    "make_steering_adders",
    "make_steering_hooks",
    "steer",
    "UNITS",
]

UNITS: tuple[str, ...] = ("relative", "absolute")
"""Units of γ: a fraction of each layer's mean residual norm, or the unit vector as is."""


@dataclass(frozen=True, kw_only=True)
class SteeringSpec:
    """One direction set applied with strength ``gamma`` at ``layers``.

    A spec is also a :class:`~icon2_lens.model.hooks.ResidualEditor`, so generation takes it as
    it is (``generate(model, prompts, steering=[spec])``).

    Attributes:
        directions: The criterion's unit directions.
        gamma: Strength; a float, or one float per batch row (chosen and rejected rows of the same
            batch can carry opposite signs).
        layers: Layers to steer (must be in ``directions``); ``None`` for all of its layers.
        unit: ``relative`` (γ × the layer's mean residual norm) or ``absolute``.
        positions: ``all`` or ``generated`` (see the module docstring).
        prompt_len: Prompt length in tokens, needed for ``positions="generated"``.
    """

    directions: DirectionSet
    gamma: float | Sequence[float]
    layers: Sequence[int] | None = None
    unit: Literal["relative", "absolute"] = "relative"
    positions: Literal["all", "generated"] = "all"
    prompt_len: int | None = None

    def _gammas(self) -> list[float]:
        return [self.gamma] if isinstance(self.gamma, (int, float)) else list(self.gamma)

    def __post_init__(self) -> None:
        gammas = self._gammas()
        if not gammas or not all(isinstance(g, (int, float)) and math.isfinite(g) for g in gammas):
            raise ValueError(f"gamma must be finite number(s), got {self.gamma!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; use one of {', '.join(UNITS)}")
        if self.positions not in POSITIONS:
            raise ValueError(
                f"unknown positions {self.positions!r}; use one of {', '.join(POSITIONS)}"
            )
        if self.positions == "generated" and (self.prompt_len is None or self.prompt_len < 1):
            raise ValueError(
                "positions='generated' needs prompt_len (the prompt's length in tokens)"
            )
        if self.layers is not None:
            missing = [layer for layer in self.layers if layer not in self.directions.layers]
            if missing:
                raise ValueError(
                    f"layers {missing} are not in the {self.directions.criterion!r} direction set "
                    f"(it holds {list(self.directions.layers)})"
                )
        if self.unit == "relative" and not self.directions.stats:
            raise ValueError(
                "unit='relative' needs per-layer mean_resid_norm statistics; use unit='absolute'"
            )

    def vectors(self) -> dict[str, Tensor]:
        """Hook name -> ``scale · u`` (float32, without γ), for every steered layer."""
        layers = list(self.layers) if self.layers is not None else list(self.directions.layers)
        out = {}
        for layer in layers:
            j = self.directions.index(layer)
            scale = (
                float(self.directions.stats[j]["mean_resid_norm"])
                if self.unit == "relative"
                else 1.0
            )
            out[self.directions.hook_names[j]] = self.directions.vectors[j] * scale
        return out

    def gamma_tensor(self) -> Tensor:
        """γ as a ``[batch or 1, 1, 1]`` tensor."""
        return torch.tensor(self._gammas(), dtype=torch.float32).view(-1, 1, 1)

    @property
    def hook_names(self) -> list[str]:
        """The hook points this spec steers."""
        return list(self.vectors())

    def check(self, model: LensModel, n_rows: int | None = None) -> None:
        """Raise before any work unless the spec fits ``model`` (and a batch of ``n_rows`` rows).

        Raises:
            ValueError: A direction set of another width, layers outside the model, or a number
                of per-row γ that is neither 1 nor ``n_rows``.
            KeyError: A hook name the model does not have.
        """
        ds = self.directions
        check_compatible(ds, model, check_fingerprint=False)
        validate_hook_names(model, self.hook_names)
        n = len(self._gammas())
        if n_rows is not None and n not in (1, n_rows):
            raise ValueError(f"{n} per-row gammas for {n_rows} rows: pass one gamma per row")

    def bind(
        self,
        rows: RowSelection | None,
        row_ids: Sequence[int],
        prompt_len: int,  # noqa: ARG002
    ) -> list[tuple[str, "SteeringAdder"]]:
        """One adder per steered hook point for one batch (per-row γ follows ``rows`` as rows finish)."""
        spec = replace(self, prompt_len=prompt_len) if self.positions == "generated" else self
        gamma = spec.gamma_tensor()
        return [
            (
                name,
                SteeringAdder(delta.view(1, 1, -1), gamma, spec.positions, spec.prompt_len, rows),
            )
            for name, delta in spec.vectors().items()
        ]


class SteeringAdder:
    """Adds ``γ · delta`` to a residual tensor ``[batch, pos, d_model]``; one per hook point.

    Callable on the tensor alone, so the same object serves TransformerLens hook points and plain
    PyTorch module hooks. ``γ · delta`` is built once per device/dtype/row selection, not on every
    generated token.
    """

    def __init__(
        self,
        delta: Tensor,
        gamma: Tensor,
        positions: str,
        prompt_len: int | None,
        rows: RowSelection | None = None,
    ) -> None:
        self.delta, self.gamma, self.positions, self.prompt_len = (
            delta,
            gamma,
            positions,
            prompt_len,
        )
        self.rows = rows
        self.calls = 0
        self._add: Tensor | None = None
        self._key: tuple | None = None

    def _addend(self, resid: Tensor) -> Tensor:
        version = self.rows.version if self.rows is not None else 0
        key = (resid.device, resid.dtype, version)
        if self._add is None or self._key != key:
            gamma = self.gamma
            if self.rows is not None and self.rows.index is not None and gamma.shape[0] > 1:
                gamma = gamma[self.rows.index]
            self._add = gamma.to(resid.device, resid.dtype) * self.delta.to(
                resid.device, resid.dtype
            )
            self._key = key
        return self._add

    def __call__(self, resid: Tensor) -> Tensor:
        add = self._addend(resid)
        if add.shape[0] not in (1, resid.shape[0]):
            raise ValueError(
                f"{add.shape[0]} per-row gammas for a batch of {resid.shape[0]}: pass one gamma per row"
            )
        first = self.calls == 0
        self.calls += 1
        start = edit_start(self.positions, resid, self.prompt_len, first)
        if start is None:
            return resid + add
        mask = torch.zeros(resid.shape[1], 1, dtype=resid.dtype, device=resid.device)
        mask[start:] = 1
        return resid + add * mask


def make_steering_adders(
    model: LensModel,
    specs: SteeringSpec | Sequence[SteeringSpec],
    *,
    rows: RowSelection | None = None,
) -> list[tuple[str, SteeringAdder]]:
    """Validate ``specs`` against ``model`` and build one adder per (spec, steered hook point).

    Raises:
        ValueError: A direction set of another width, or layers outside the model.
        KeyError: A hook name the model does not have.
    """
    specs = [specs] if isinstance(specs, SteeringSpec) else list(specs)
    if not specs:
        raise ValueError("no steering specs given")
    adders: list[tuple[str, SteeringAdder]] = []
    for spec in specs:
        spec.check(model)
        adders.extend(spec.bind(rows, (), spec.prompt_len or 0))
    return adders


def make_steering_hooks(
    model: LensModel, specs: SteeringSpec | Sequence[SteeringSpec]
) -> list[tuple[str, Callable]]:
    """Build (without attaching) one hook per steered hook point; several specs may share points.

    Raises:
        ValueError: A direction set of another width, or layers outside the model.
        KeyError: A hook name the model does not have.
    """
    return [(name, as_tl_hook(adder)) for name, adder in make_steering_adders(model, specs)]


@contextmanager
def steer(model: LensModel, *specs: SteeringSpec) -> Iterator[LensModel]:
    """Context manager: the model steered by ``specs`` inside the block, untouched after it.

    Hooks are built and validated before anything is attached, and removed on exit, also when
    the block raises. The model's weights are never modified.
    """
    hooks = make_steering_hooks(model, list(specs))
    with model.hooks(fwd_hooks=hooks):
        yield model
