"""Hook names and layer indices: normalised and validated in one place.

Example:
    >>> resid_hook_name(3)
    'blocks.3.hook_resid_post'
    >>> normalize_layers([0, -1], n_layers=30)
    [0, 29]
"""

import difflib
from collections.abc import Iterable, Sequence

from ._types import SITES, LensModel

__all__ = ["resid_hook_name", "normalize_layers", "parse_layers", "check_site", "validate_hook_names"]


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
                f"layer {layer} is out of range: the model has {n_layers} layers "
                f"(use 0..{n_layers - 1}, or -{n_layers}..-1 counting from the end)"
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
    if spec is None or spec.strip().lower() in ("", "all"):
        return normalize_layers(None, n_layers)
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-") if not part.startswith("-") else ("", "", "")
        try:
            if sep and lo:
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
        except ValueError as e:
            raise ValueError(
                f"cannot read layer selection {spec!r}: use 'all', 'A-B' ranges and "
                "comma-separated indices such as '10-19' or '3,5,-1'"
            ) from e
    return normalize_layers(layers, n_layers)


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
