"""Small differences between transformers releases, handled in one place.

transformers 5.2x renamed the KV-cache argument of ``forward`` from ``past_key_values`` to
``cache`` (the old name warns and is due to be removed); both spellings are supported here, and
``logits_to_keep`` is passed only to models whose ``forward`` accepts it.
"""

import inspect
from functools import lru_cache
from typing import Any

__all__ = ["forward_options", "output_cache", "accepts"]


@lru_cache(maxsize=32)
def _forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def accepts(net: Any, name: str) -> bool:
    """Whether ``net.forward`` takes an argument called ``name``."""
    return name in _forward_parameters(type(net))


def forward_options(
    net: Any, *, cache: Any = None, use_cache: bool, last_logits_only: bool = False
) -> dict[str, Any]:
    """Keyword arguments for ``net.forward`` with a KV cache (or none) under this release's names.

    Args:
        net: A Hugging Face model.
        cache: The KV cache to continue from (``None`` for a fresh one).
        use_cache: Whether the forward keeps (and returns) a KV cache.
        last_logits_only: Compute logits for the last position only (``logits_to_keep=1``),
            when the model supports it; the hidden states are unchanged.
    """
    params = _forward_parameters(type(net))
    out: dict[str, Any] = {"use_cache": use_cache}
    if cache is not None:
        out["cache" if "cache" in params else "past_key_values"] = cache
    if last_logits_only and "logits_to_keep" in params:
        out["logits_to_keep"] = 1
    return out


def output_cache(result: Any) -> Any:
    """The KV cache a forward returned, under either of its names."""
    cache = getattr(result, "cache", None)
    return cache if cache is not None else getattr(result, "past_key_values", None)
