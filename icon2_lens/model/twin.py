"""A fast twin of a bridge: the same weights run by Hugging Face's own modules and SDPA attention.

The bridge replaces the HF model's submodules in place with wrappers that reconstruct attention
step by step (eager), ≈ 20 % slower than HF's default attention. :func:`fast_twin` builds, once
per bridge, a plain HF model from the same config on the ``meta`` device and *assigns* it the
bridge's very parameter and buffer tensors: no memory is copied and nothing is modified.

Residual-stream hook names keep their meaning on the twin, by one table (:data:`SITE_HOOKS`):
``blocks.{l}.hook_resid_post`` is the output of decoder layer ``l`` (a forward hook),
``blocks.{l}.hook_resid_pre`` its input (a forward pre-hook). ``resid_mid`` lies inside a layer
in HF code, so it needs the bridge.
"""

import copy
import logging
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from icon2_lens._types import LensModel

from .compat import forward_options, output_cache
from .cost import count_forward
from .hooks import ResidualFn, as_tl_hook, split_hook_name

__all__ = [
    "fast_twin",
    "block_modules",
    "attached",
    "register_site_hook",
    "FAST_SITES",
    "SITE_HOOKS",
    "StopForward",
    "twin_residuals",
    "common_prefix_len",
    "prefix_cache",
]

log = logging.getLogger(__name__)

SITE_HOOKS: dict[str, str] = {"resid_post": "output", "resid_pre": "input"}
"""Residual site -> what of a decoder layer carries it on the twin (its output or its input)."""

FAST_SITES: tuple[str, ...] = tuple(SITE_HOOKS)

_TWINS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], Any]]" = weakref.WeakKeyDictionary()


def _strip(name: str) -> str:
    return name.replace("_original_component.", "")


def _param_pointers(hf: torch.nn.Module) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in hf.parameters())


def fast_twin(model: LensModel) -> torch.nn.Module | None:
    """A plain HF model sharing ``model``'s parameters, with SDPA attention; ``None`` if impossible.

    The bridge replaces the HF model's submodules in place with its own wrappers; the twin is
    built empty (on the ``meta`` device) from the same config and then *assigned* the very same
    parameter and buffer tensors, so it costs no memory and sees any later in-place change.
    """
    hf = getattr(model, "original_model", None)
    if hf is None:
        return None
    pointers = _param_pointers(hf)
    cached = _TWINS.get(model)
    if cached is not None and cached[0] == pointers:
        return cached[1]
    try:
        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(hf.config)
        with torch.device("meta"):
            twin = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        state: dict[str, Tensor] = {}
        for name, tensor in hf.state_dict(keep_vars=True).items():
            state.setdefault(_strip(name), tensor)
        result = twin.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys:
            log.info("no fast twin: parameters %s not found in the bridge", result.missing_keys[:3])
            return None
        buffers = {}
        for name, tensor in hf.named_buffers():
            buffers.setdefault(_strip(name), tensor)
        for name, _ in list(twin.named_buffers()):
            owner, _, attr = name.rpartition(".")
            if name not in buffers:
                log.info("no fast twin: buffer %s not found in the bridge", name)
                return None
            twin.get_submodule(owner)._buffers[attr] = buffers[name]
        twin.eval()
        if getattr(twin.config, "tie_word_embeddings", False):
            # assign=True may leave a tied head pointing at the meta tensor
            twin.tie_weights()
        if any(t.is_meta for t in twin.parameters()):
            return None
    except Exception as err:  # noqa: BLE001 - any architecture we cannot twin falls back
        log.info("no fast twin (%s: %s); using the bridge", type(err).__name__, err)
        return None
    _TWINS[model] = (pointers, twin)
    return twin


def block_modules(model: LensModel, twin: torch.nn.Module) -> torch.nn.ModuleList | None:
    mapping = getattr(getattr(model, "adapter", None), "component_mapping", None) or {}
    blocks = mapping.get("blocks")
    path = getattr(blocks, "name", None)
    if not path:
        return None
    try:
        layers = twin.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != model.cfg.n_layers:
        return None
    return layers


def register_site_hook(
    layer_module: torch.nn.Module, site: str, fn: Callable[[Tensor], Tensor | None]
):
    """Register ``fn`` on the residual stream at ``site`` of one decoder layer; returns the handle.

    ``fn`` receives the residual tensor (the layer's output for ``resid_post``, its input for
    ``resid_pre``); if it returns a tensor, that tensor replaces the residual stream.
    """
    where = SITE_HOOKS.get(site)
    if where is None:
        raise ValueError(f"site {site!r} has no module boundary on the fast twin; use the bridge")
    if where == "output":

        def post(module, args, output):  # noqa: ARG001
            hidden = output[0] if isinstance(output, tuple) else output
            new = fn(hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return layer_module.register_forward_hook(post)

    def pre(module, args, kwargs):  # noqa: ARG001
        hidden = args[0] if args else kwargs["hidden_states"]
        new = fn(hidden)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return layer_module.register_forward_pre_hook(pre, with_kwargs=True)


@contextmanager
def attached(model: LensModel, twin, adders: Sequence[tuple[str, ResidualFn]]):
    """Attach residual edits to the twin's layers or to the bridge's hook points; always detach."""
    if twin is None:
        with model.hooks(fwd_hooks=[(name, as_tl_hook(adder)) for name, adder in adders]):
            yield
        return
    layers = block_modules(model, twin)
    handles = []
    try:
        for name, adder in adders:
            layer, site = split_hook_name(name)
            handles.append(register_site_hook(layers[layer], site, adder))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed layer has run."""


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every row, leaving each row one token of its own.

    Example:
        >>> common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
        2
        >>> common_prefix_len([[1, 2], [1, 2]])
        1
    """
    if not rows:
        return 0
    first, limit = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def prefix_cache(twin, prefix: Sequence[int]) -> Any:
    """The KV cache of one forward of the twin over ``prefix`` (batch 1), to continue from."""
    body = twin.base_model
    ids = torch.tensor([list(prefix)], dtype=torch.long)
    count_forward(ids.shape[1])
    return output_cache(body(input_ids=ids, **forward_options(body, use_cache=True)))


def twin_residuals(
    model: LensModel,
    twin,
    ids: Tensor,
    mask: Tensor,
    layers: Sequence[int],
    site: str,
    *,
    prefix: tuple[Any, int] | None = None,
) -> Tensor:
    """Last-position residuals ``[batch, layer, d_model]`` at ``site`` from one forward of the twin.

    The pass stops right after the last requested layer (no later blocks, no unembedding).

    With ``prefix = (cache, length)`` from :func:`prefix_cache`, ``ids`` / ``mask`` hold only what
    follows a shared prefix of ``length`` tokens, whose keys and values are reused for every row
    instead of being recomputed: the rows are the prefix followed by their (left-padded) suffix,
    with positions continuing after the prefix, so the result is the same function of the full
    prompts (up to float rounding) for a fraction of the work when the prefix is long (a
    criterion's system prompt, the template's default system prompt).
    """
    mods = block_modules(model, twin)
    out = torch.empty(ids.shape[0], len(layers), model.cfg.d_model, dtype=torch.float32)
    last = max(layers)
    handles = []

    def keep(j: int, stop: bool):
        def fn(hidden: Tensor) -> None:
            out[:, j] = hidden[:, -1].to(torch.float32)
            if stop:
                raise StopForward

        return fn

    try:
        for j, layer in enumerate(layers):
            handles.append(register_site_hook(mods[layer], site, keep(j, layer == last)))
        count_forward(int(mask.sum()))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        body = twin.base_model
        if prefix is None:
            options = forward_options(body, use_cache=False)
        else:
            cache, length = prefix
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(ids.shape[0])
            positions = positions + length
            mask = torch.cat([torch.ones(ids.shape[0], length, dtype=mask.dtype), mask], dim=1)
            options = forward_options(body, cache=cache, use_cache=True)
        try:
            body(input_ids=ids, attention_mask=mask, position_ids=positions, **options)
        except StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return out
