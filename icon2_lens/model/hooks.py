"""Hook names, layer indices and the callables that edit the residual stream, in one place.

* Names: :func:`resid_hook_name` is the only place a hook name is built; :func:`normalize_layers`
  and :func:`parse_layers` turn user selections into block indices; :func:`validate_hook_names`
  checks names before anything is attached.
* Residual edits: a :data:`ResidualFn` maps a residual tensor ``[batch, pos, d_model]`` to a new
  one. The same callable serves TransformerLens hook points (through :func:`as_tl_hook`) and
  the plain PyTorch module hooks of the fast twin (:mod:`icon2_lens.model.twin`).
  :class:`RowSelection` tells batch-dependent edits which rows of the original batch remain,
  and :class:`ResidualEditor` is the protocol of data-dependent editors (AlignEZ).

Example:
    >>> resid_hook_name(3)
    'blocks.3.hook_resid_post'
    >>> normalize_layers([0, -1], n_layers=30)
    [0, 29]
"""

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from icon2_lens._config import parse_layer_spec
from icon2_lens._types import SITES, LensModel

__all__ = [
    "resid_hook_name",
    "split_hook_name",
    "normalize_layers",
    "parse_layers",
    "check_site",
    "validate_hook_names",
    "ResidualFn",
    "as_tl_hook",
    "RowSelection",
    "ResidualEditor",
    "POSITIONS",
    "edit_start",
]

ResidualFn = Callable[[Tensor], Tensor]
"""A residual edit: ``[batch, pos, d_model]`` in, a new tensor of the same shape out."""


def check_site(site: str) -> str:
    """Return ``site`` if it is one of :data:`SITES`, else raise a ``ValueError`` naming them."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; use one of {', '.join(SITES)}")
    return site


def resid_hook_name(layer: int, site: str = "resid_post") -> str:
    """The TransformerLens hook name of the residual stream at ``site`` of block ``layer``.

    Args:
        layer: Non-negative block index (normalise negatives with :func:`normalize_layers`).
        site: ``resid_pre``, ``resid_mid`` or ``resid_post``.
    """
    check_site(site)
    return f"blocks.{int(layer)}.hook_{site}"


def split_hook_name(name: str) -> tuple[int, str]:
    """``(layer, site)`` of a residual hook name, the inverse of :func:`resid_hook_name`.

    Example:
        >>> split_hook_name("blocks.12.hook_resid_pre")
        (12, 'resid_pre')
    """
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[2].startswith("hook_"):
        raise ValueError(f"{name!r} is not a residual hook name such as 'blocks.3.hook_resid_post'")
    return int(parts[1]), check_site(parts[2][len("hook_") :])


def normalize_layers(layers: Sequence[int] | int | None, n_layers: int) -> list[int]:
    """Turn a layer selection into a sorted list of distinct non-negative block indices.

    Args:
        layers: ``None`` for every layer, one index, or a sequence. Negative indices count from
            the end, as in Python (``-1`` is the last block).
        n_layers: Number of blocks of the model.

    Raises:
        ValueError: A layer is out of range or the selection is empty.

    Example:
        >>> normalize_layers(None, 3)
        [0, 1, 2]
        >>> normalize_layers(-2, 3)
        [1]
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out: set[int] = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layer indices must be integers, got {layer!r}")
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layer {layer} is out of range: the model has {n_layers} layers; "
                f"use 0..{n_layers - 1}, or -{n_layers}..-1 counting from the end"
            )
        out.add(layer % n_layers)
    if not out:
        raise ValueError("the layer selection is empty; pass at least one layer (or None for all)")
    return sorted(out)


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Parse a command-line layer selection such as ``"all"``, ``"10-19"``, ``"3,5,-1"``.

    Example:
        >>> parse_layers("2-4,-1", 30)
        [2, 3, 4, 29]
    """
    if spec is None or not spec.strip():
        return normalize_layers(None, n_layers)
    layers = parse_layer_spec(spec, "all")
    return normalize_layers(None if layers is None else list(layers), n_layers)


def validate_hook_names(model: LensModel, names: Iterable[str]) -> None:
    """Raise a ``KeyError`` naming close matches if any hook name does not exist on ``model``.

    Runs before anything is attached, so a typo never leaves a half-hooked model.
    """
    available = model.hook_dict
    missing = [n for n in names if n not in available]
    if missing:
        n_layers = getattr(model.cfg, "n_layers", "?")
        hints = {n: difflib.get_close_matches(n, list(available), n=3) for n in missing}
        msg = "; ".join(
            f"{n!r} does not exist (model has {n_layers} layers"
            + (f"; did you mean {', '.join(map(repr, h))}?)" if h else ")")
            for n, h in hints.items()
        )
        raise KeyError(msg)


def as_tl_hook(fn: ResidualFn) -> Callable[..., Tensor]:
    """A TransformerLens hook (``fn(tensor, *, hook)``) that applies the residual edit ``fn``."""

    def hook(resid: Tensor, hook: Any) -> Tensor:  # noqa: ARG001 - TransformerLens passes `hook`
        return fn(resid)

    return hook


class RowSelection:
    """Which rows of the original batch are still being computed (``None``: all of them).

    A generation loop that drops finished rows from its batch updates ``index`` so that per-row
    edits (per-row γ, per-query masks) stay aligned with the rows that remain.
    """

    def __init__(self) -> None:
        self.index: Tensor | None = None
        self.version = 0

    def select(self, index: Tensor | None) -> None:
        self.index = index
        self.version += 1


@runtime_checkable
class ResidualEditor(Protocol):
    """A data-dependent edit of the residual stream during generation (e.g. :mod:`icon2_lens.alignez`).

    Where a steering spec adds a fixed vector, an editor maps the residual tensor to a new one.
    ``hook_names`` lists the TransformerLens hook points it edits (``resid_pre``/``resid_post``
    sites run on the fast backend). For each batch the generation loop calls :meth:`bind` with
    the batch's :class:`RowSelection` (which rows are still generating), the ids of its rows
    (prompt indices for :func:`~icon2_lens.model.generate.generate`) and the padded prompt
    length; it returns ``(hook_name, fn)`` pairs of :data:`ResidualFn` attached for that batch only.
    Before any work, :meth:`check` validates the editor against the model and the batch size.
    """

    hook_names: Sequence[str]

    def check(self, model: LensModel, n_rows: int) -> None:
        """Raise a ``ValueError`` (before any work) if the editor cannot edit ``n_rows`` rows of ``model``."""
        ...

    def bind(
        self, rows: RowSelection, row_ids: Sequence[int], prompt_len: int
    ) -> list[tuple[str, ResidualFn]]:
        """The ``(hook_name, fn)`` edits of one batch."""
        ...


POSITIONS: tuple[str, ...] = ("all", "generated")
"""Which positions an edit touches: every position, or the generated ones (with the last prompt
position, whose output is the first generated token)."""


def edit_start(
    positions: str, resid: Tensor, prompt_len: int | None, first_call: bool
) -> int | None:
    """First position an edit with ``positions`` touches in this forward call (``None``: all of them).

    ``all`` edits every position of every call. ``generated`` edits the last prompt position and
    everything after it: in a full-sequence call that is positions ``>= prompt_len - 1``; a
    KV-cached step (one position per call after the first) is always edited.

    Example:
        >>> import torch
        >>> edit_start("generated", torch.zeros(1, 5, 4), 4, True), edit_start("generated", torch.zeros(1, 1, 4), 4, False)
        (3, None)
    """
    if positions == "all" or (resid.shape[1] == 1 and not first_call):
        return None
    return max(0, int(prompt_len or 0) - 1)
