"""A fast twin of a bridge: the same weights run by Hugging Face's own modules and SDPA attention.

The bridge replaces the HF model's submodules in place with wrappers that reconstruct attention
step by step (eager), ≈ 20 % slower than HF's default attention. :func:`fast_twin` builds, once
per bridge, a plain HF model from the same config on the ``meta`` device and *assigns* it the
bridge's very parameter and buffer tensors: no memory is copied and nothing is modified.

Residual-stream hook names keep their meaning on the twin: ``blocks.{l}.hook_resid_post`` is the
output of decoder layer ``l`` (a forward hook), ``blocks.{l}.hook_resid_pre`` its input (a
forward pre-hook). ``resid_mid`` lies inside a layer in HF code, so it needs the bridge.
"""

import copy
import logging
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ._hf import forward_options, output_cache
from ._types import LensModel
from .cost import count_forward
from .steer import _tl_hook

__all__ = [
    "fast_twin",
    "block_modules",
    "attached",
    "FAST_SITES",
    "twin_residuals",
    "common_prefix_len",
    "prefix_cache",
]

log = logging.getLogger(__name__)

FAST_SITES: tuple[str, ...] = ("resid_pre", "resid_post")

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


def _split_hook_name(name: str) -> tuple[int, str]:
    parts = name.split(".")  # blocks.{l}.hook_resid_{site}
    return int(parts[1]), parts[2]


def _post_hook(adder: Callable[[Tensor], Tensor]):
    def hook(module, args, output):  # noqa: ARG001
        if isinstance(output, tuple):
            return (adder(output[0]), *output[1:])
        return adder(output)

    return hook


def _pre_hook(adder: Callable[[Tensor], Tensor]):
    def hook(module, args, kwargs):  # noqa: ARG001
        if args:
            return (adder(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = adder(kwargs["hidden_states"])
        return args, kwargs

    return hook


@contextmanager
def attached(model: LensModel, twin, adders: Sequence[tuple[str, Callable[[Tensor], Tensor]]]):
    """Attach steering adders to the twin's layers or to the bridge's hook points; always detach."""
    if twin is None:
        with model.hooks(fwd_hooks=[(name, _tl_hook(adder)) for name, adder in adders]):
            yield
        return
    layers = block_modules(model, twin)
    handles = []
    try:
        for name, adder in adders:
            layer, site = _split_hook_name(name)
            if site == "hook_resid_post":
                handles.append(layers[layer].register_forward_hook(_post_hook(adder)))
            else:
                handles.append(
                    layers[layer].register_forward_pre_hook(_pre_hook(adder), with_kwargs=True)
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Stop(Exception):
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

    def post(j: int, stop: bool):
        def hook(module, args, output):  # noqa: ARG001
            hidden = output[0] if isinstance(output, tuple) else output
            out[:, j] = hidden[:, -1].to(torch.float32)
            if stop:
                raise _Stop

        return hook

    def pre(j: int):
        def hook(module, args, kwargs):  # noqa: ARG001
            hidden = args[0] if args else kwargs["hidden_states"]
            out[:, j] = hidden[:, -1].to(torch.float32)
            if site == "resid_pre" and layers[j] == last:
                raise _Stop

        return hook

    try:
        for j, layer in enumerate(layers):
            if site == "resid_post":
                handles.append(mods[layer].register_forward_hook(post(j, layer == last)))
            else:
                handles.append(mods[layer].register_forward_pre_hook(pre(j), with_kwargs=True))
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
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    return out
