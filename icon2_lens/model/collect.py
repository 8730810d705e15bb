"""Residual-stream caching at the last real token of each prompt.

Only the activations asked for are kept: each hook copies the last position of its batch to a
float32 CPU tensor and drops the rest, so memory grows with ``n * layers * d_model``, not with
sequence length.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.model.chat import render_chat
    >>> model = tiny_model()
    >>> texts = [render_chat(model.tokenizer, q) for q in ["what is a cat ?", "why"]]
    >>> collect_resid(model, texts, layers=[0, -1], progress=False).shape
    torch.Size([2, 2, 16])
"""

import logging
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._types import LensModel

from .chat import encode_prompts, pad_left
from .cost import count_forward
from .hooks import check_site, normalize_layers, resid_hook_name, validate_hook_names
from .twin import (
    FAST_SITES,
    block_modules,
    common_prefix_len,
    fast_twin,
    prefix_cache,
    twin_residuals,
)

__all__ = ["collect_resid", "MIN_SHARED_PREFIX"]

logger = logging.getLogger(__name__)

#: Shortest shared token prefix worth computing once (``share_prefix``).
MIN_SHARED_PREFIX = 4


def _write_last_position(out: Tensor, column: int, rows: dict[str, Tensor], fired: list[int]):
    """A hook that copies the last position of its batch straight into ``out[rows, column]``."""

    def hook(resid: Tensor, hook) -> Tensor:  # noqa: ARG001 - TransformerLens passes `hook`
        out[rows["current"], column] = resid[:, -1, :].detach().to("cpu", torch.float32)
        fired[column] += 1
        return resid

    return hook


def collect_resid(
    model: LensModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | int | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "caching residuals",
    backend: str = "bridge",
    share_prefix: bool = True,
) -> Float[Tensor, "n layer d_model"]:
    """Residual stream at the last token of each rendered prompt, at every chosen layer.

    Prompts are run in batches sorted by length (less padding) and left-padded with an explicit
    attention mask, so every row gives the same activations as when run alone. Blocks after the
    last requested layer are skipped.

    Args:
        model: A ``TransformerBridge`` (or anything with the same hooks).
        texts: Fully rendered prompts (see :func:`icon2_lens.model.chat.render_chat`).
        layers: Block indices (negatives count from the end); ``None`` for all.
        site: ``resid_pre``, ``resid_mid`` or ``resid_post``.
        batch_size: Prompts per forward pass.
        progress: Show a progress bar.
        desc: Progress-bar label.
        backend: ``bridge`` (the bridge's hook points) or ``fast`` (the SDPA twin of
            :mod:`icon2_lens.model.twin`, ≈ 10-20 % faster; same values up to float rounding; falls
            back to the bridge for ``resid_mid`` or architectures it cannot mirror).
        share_prefix: With the fast backend, compute the token prefix that every prompt shares
            (e.g. a criterion's system prompt) once and reuse its keys and values for every
            row (:func:`~icon2_lens.model.twin.twin_residuals`); the values are unchanged up to float
            rounding.

    Returns:
        Float32 CPU tensor ``[n, layer, d_model]`` in the order of ``texts`` and of the sorted
        layers.

    Raises:
        ValueError: Empty ``texts``, unknown site, layer out of range, prompt longer than the
            model's context.
    """
    check_site(site)
    if len(texts) == 0:
        raise ValueError("no prompts to cache: pass at least one instruction")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n_layers = model.cfg.n_layers
    layer_list = normalize_layers(layers, n_layers)
    names = [resid_hook_name(layer, site) for layer in layer_list]
    validate_hook_names(model, names)
    tokenizer = model.tokenizer
    n_ctx = getattr(model.cfg, "n_ctx", None)

    encoded = encode_prompts(
        tokenizer, texts, max_len=n_ctx
    )  # tokenized once, checked against n_ctx
    order = sorted(range(len(texts)), key=lambda i: (len(encoded[i]), i))
    stop_at = layer_list[-1] + 1 if layer_list[-1] + 1 < n_layers else None
    out = torch.empty(len(texts), len(layer_list), model.cfg.d_model, dtype=torch.float32)

    if backend not in ("bridge", "fast"):
        raise ValueError(f"unknown backend {backend!r}; use 'bridge' or 'fast'")
    twin = fast_twin(model) if backend == "fast" and site in FAST_SITES else None
    if twin is not None and block_modules(model, twin) is None:
        twin = None
    if twin is not None:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        with torch.inference_mode():
            shared = common_prefix_len(encoded) if share_prefix else 0
            prefix = (
                (prefix_cache(twin, encoded[0][:shared]), shared)
                if shared >= MIN_SHARED_PREFIX
                else None
            )
            cut = prefix[1] if prefix is not None else 0
            for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
                ids, mask = pad_left(tokenizer, [encoded[i][cut:] for i in batch])
                out[torch.tensor(batch)] = twin_residuals(
                    model, twin, ids, mask, layer_list, site, prefix=prefix
                )
        return out

    rows: dict[str, Tensor] = {}
    fired = [0] * len(names)
    fwd_hooks = [(name, _write_last_position(out, j, rows, fired)) for j, name in enumerate(names)]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = getattr(model.cfg, "device", None) or "cpu"
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks):
        for k, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
            ids, mask = pad_left(tokenizer, [encoded[i] for i in batch])
            rows["current"] = torch.tensor(batch)
            model(
                ids.to(device),
                attention_mask=mask.to(device),
                return_type=None,
                stop_at_layer=stop_at,
            )
            count_forward(int(mask.sum()))
            if any(f != k + 1 for f in fired):
                raise RuntimeError(
                    f"a residual hook fired {fired} times after {k + 1} forward passes"
                )
    logger.debug("cached %d prompts at %d layers (%s)", len(texts), len(layer_list), site)
    return out
