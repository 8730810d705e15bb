"""Batched, optionally steered generation: stop at the end of the turn, decode only new tokens.

One generation loop serves two backends that compute the same function:

``fast`` (used by ``backend="auto"`` when possible)
    A plain Hugging Face twin of the bridge's model that *shares its parameter tensors* (nothing is
    copied or modified) and runs the library's default attention (SDPA) instead of the bridge's
    step-by-step eager reconstruction, which is ≈ 20 % slower. Steering still addresses
    TransformerLens hook names: ``blocks.{l}.hook_resid_post`` becomes a forward hook on decoder
    layer ``l`` (its output *is* the residual stream after the block), ``hook_resid_pre`` a forward
    pre-hook on it. ``resid_mid`` has no module boundary in HF code, so it uses the bridge.
``bridge``
    The bridge's own modules, with the steering attached at its hook points.

The loop itself (rather than ``generate()``) keeps a KV cache, drops rows from the batch as soon
as they reach the end of their turn (their γ follows them, see :class:`~icon2_lens.model.hooks.RowSelection`),
and samples each row from its own seeded generator, so a row's text does not depend on which
other rows share its batch. Greedy decoding is the default.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.model.chat import render_chat
    >>> model = tiny_model()
    >>> out = generate(model, [render_chat(model.tokenizer, "hello world")], Decoding(max_new_tokens=4))
    >>> len(out[0].token_ids) <= 4
    True
"""

import logging
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._config import documented, option
from icon2_lens._types import LensModel

from .chat import encode_prompts, pad_left, user_turn_template
from .compat import forward_options, output_cache
from .cost import count_forward
from .hooks import ResidualEditor, RowSelection
from .twin import attached, block_modules, fast_twin

__all__ = [
    "Decoding",
    "Generation",
    "generate",
    "generate_rows",
    "stop_token_ids",
    "BACKENDS",
]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "fast", "bridge")


@documented
@dataclass(frozen=True, kw_only=True)
class Decoding:
    """Decoding settings (recorded with every output). Both ``use_cache`` settings give the same tokens."""

    max_new_tokens: int = option(
        128, help="generation budget per row (a row that reaches it is marked unfinished)"
    )
    do_sample: bool = option(False, help="sample instead of greedy decoding")
    temperature: float = option(1.0, help="sampling temperature")
    top_p: float = option(1.0, help="nucleus sampling mass")
    seed: int = option(
        0, help="base seed; row i samples from a generator seeded with (seed, row seed i)"
    )
    use_cache: bool = option(True, help="use a KV cache", cli=False)
    stop: bool = option(
        True,
        help="stop each row at the end of its turn (False: exactly max_new_tokens, "
        "for benchmarks at fixed lengths)",
        cli=False,
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclass
class Generation:
    """One generated continuation.

    Attributes:
        text: The new tokens decoded (special tokens skipped, surrounding whitespace stripped).
        token_ids: The new tokens, without the stop token.
        finished: Whether the row reached the end of its turn within the budget.
    """

    text: str
    token_ids: list[int] = field(repr=False)
    finished: bool

    @classmethod
    def decoded(cls, tokenizer, token_ids: list[int], finished: bool) -> "Generation":
        """The generation of ``token_ids``, its text decoded as :attr:`text` describes."""
        return cls(
            tokenizer.decode(token_ids, skip_special_tokens=True).strip(), token_ids, finished
        )


def stop_token_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant or user turn: EOS plus the template's end-of-turn token.

    The end-of-turn text comes from :func:`~icon2_lens.model.chat.user_turn_template`; its first
    token is taken when it is a special token (e.g. ChatML's ``<|im_end|>``).
    """
    ids: set[int] = set()
    eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        ids.add(eos)
    if getattr(tokenizer, "chat_template", None):
        try:
            end = user_turn_template(tokenizer).end_of_turn
        except ValueError:
            end = ""
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end.strip() else []
        special = set(tokenizer.all_special_ids)
        if end_ids and end_ids[0] in special:
            ids.add(end_ids[0])
    if not ids:
        raise ValueError(
            "the tokenizer has neither an EOS token nor an end-of-turn token: generation cannot stop"
        )
    return ids


def _choose_backend(model: LensModel, editors: Sequence[ResidualEditor], backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "bridge":
        return None
    sites_ok = all(
        name.endswith(("hook_resid_pre", "hook_resid_post"))
        for e in editors
        for name in e.hook_names
    )
    twin = fast_twin(model) if sites_ok else None
    if twin is not None and block_modules(model, twin) is None:
        twin = None
    if twin is None and backend == "fast":
        raise ValueError(
            "the fast backend is not available for this model or site (resid_mid steering and "
            "architectures the twin cannot mirror need backend='bridge')"
        )
    return twin


# ---------------------------------------------------------------------------------------------
# The loop


def _pick(logits: Tensor, decoding: Decoding, generators: list[torch.Generator]) -> Tensor:
    if not decoding.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / decoding.temperature, dim=-1)
    if decoding.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > decoding.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    out = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(out)


def _skip_draws(generators: list[torch.Generator], draws: Sequence[int], vocab: int) -> None:
    """Advance each row's generator past the sampling draws it made before (one per token)."""
    flat = torch.ones(vocab)
    for g, n in zip(generators, draws):
        for _ in range(int(n)):
            torch.multinomial(flat, 1, generator=g)


@torch.no_grad()
def _generate_batch(
    model: LensModel,
    twin,
    rows: Sequence[Sequence[int]],
    adders_for: Any,
    decoding: Decoding,
    stops: set[int],
    row_seeds: Sequence[int],
    row_draws: Sequence[int] = (),
) -> list[tuple[list[int], bool]]:
    net = twin if twin is not None else model.original_model
    ids, mask = pad_left(model.tokenizer, rows)
    n, prompt_len = ids.shape
    selection = RowSelection()
    adders = adders_for(prompt_len, selection)
    generators = []
    for s in row_seeds:
        g = torch.Generator()
        g.manual_seed(decoding.seed * 1_000_003 + int(s))
        generators.append(g)
    stop_tensor = torch.tensor(sorted(stops))
    out: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    active = torch.arange(n)
    cache = None
    seq = ids
    with attached(model, twin, adders) if adders else _nothing():
        for step in range(decoding.max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if decoding.use_cache:
                x = seq if step == 0 else seq[:, -1:]
                pos = positions if step == 0 else positions[:, -1:]
                result = net(
                    input_ids=x,
                    attention_mask=mask,
                    position_ids=pos,
                    **forward_options(net, cache=cache, use_cache=True, last_logits_only=True),
                )
                cache = output_cache(result)
                count_forward(int(mask.sum()) if step == 0 else x.shape[0], generated=x.shape[0])
            else:
                result = net(
                    input_ids=seq,
                    attention_mask=mask,
                    position_ids=positions,
                    **forward_options(net, use_cache=False, last_logits_only=True),
                )
                count_forward(int(mask.sum()), generated=seq.shape[0])
            logits = result.logits[:, -1, :]
            if step == 0 and decoding.do_sample:
                _skip_draws(generators, row_draws, logits.shape[-1])
            token = _pick(logits, decoding, [generators[i] for i in active.tolist()])
            done = (
                torch.isin(token, stop_tensor)
                if decoding.stop
                else torch.zeros_like(token, dtype=torch.bool)
            )
            for j, row in enumerate(active.tolist()):
                if done[j]:
                    finished[row] = True
                else:
                    out[row].append(int(token[j]))
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            seq = torch.cat([seq, token.view(-1, 1)], dim=1)
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
            if keep.numel() < active.numel():
                seq, mask, active = seq[keep], mask[keep], active[keep]
                if cache is not None:
                    cache.batch_select_indices(keep)
                selection.select(active)
    return [(out[i], finished[i]) for i in range(n)]


@contextmanager
def _nothing():
    yield


def generate_rows(
    model: LensModel,
    rows: Sequence[Sequence[int]],
    decoding: Decoding | None = None,
    *,
    steering: Sequence[ResidualEditor] = (),
    row_seeds: Sequence[int] | None = None,
    backend: str = "auto",
    editors: Sequence[ResidualEditor] = (),
    row_ids: Sequence[int] | None = None,
    row_draws: Sequence[int] | None = None,
) -> list[Generation]:
    """Generate one continuation per token row, as one batch (see :func:`generate`).

    ``steering`` (e.g. :class:`~icon2_lens.directions.steer.SteeringSpec`, which may carry one γ
    per row) and ``editors`` are residual editors; each is checked against the model and the
    batch before any work, then bound to this batch with ``row_ids`` (default ``0..n-1``) and the
    padded prompt length. Steering comes first, then the editors. ``row_draws`` (with sampling)
    is how many tokens each row already sampled from its seed: a row that continues tokens an
    earlier call sampled goes on with the same random stream, so unsteered it samples what one
    uninterrupted call would have.
    """
    decoding = decoding or Decoding()
    if len(rows) == 0:
        return []
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(len(r) for r in rows)
    if n_ctx and longest + decoding.max_new_tokens > n_ctx:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={decoding.max_new_tokens} exceeds the "
            f"model's context of {n_ctx} tokens: shorten the prompt or lower max_new_tokens"
        )
    row_seeds = list(range(len(rows))) if row_seeds is None else list(row_seeds)
    if len(row_seeds) != len(rows):
        raise ValueError(f"{len(row_seeds)} row seeds for {len(rows)} rows")
    row_draws = [0] * len(rows) if row_draws is None else [int(d) for d in row_draws]
    if len(row_draws) != len(rows) or min(row_draws) < 0:
        raise ValueError(f"need one draw count >= 0 per row, got {row_draws} for {len(rows)} rows")
    editors = [*steering, *editors]
    for editor in editors:
        editor.check(model, len(rows))  # validate before any work
    row_ids = list(range(len(rows))) if row_ids is None else list(row_ids)
    if len(row_ids) != len(rows):
        raise ValueError(f"{len(row_ids)} row ids for {len(rows)} rows")
    twin = _choose_backend(model, editors, backend)

    def adders_for(prompt_len: int, selection: RowSelection):
        out = []
        for editor in editors:
            out.extend(editor.bind(selection, row_ids, prompt_len))
        return out

    stops = stop_token_ids(model.tokenizer)
    raw = _generate_batch(model, twin, rows, adders_for, decoding, stops, row_seeds, row_draws)
    return [Generation.decoded(model.tokenizer, t, f) for t, f in raw]


def generate(
    model: LensModel,
    prompts: Sequence[str],
    decoding: Decoding | None = None,
    *,
    steering: Sequence[ResidualEditor] = (),
    batch_size: int = 16,
    backend: str = "auto",
    progress: bool = False,
    editors: Sequence[ResidualEditor] = (),
) -> list[Generation]:
    """Generate a continuation for each rendered prompt, in batches, in input order.

    Args:
        model: The bridge (its tokenizer pads on the left).
        prompts: Rendered prompts (e.g. from :func:`~icon2_lens.model.chat.render_chat`).
        decoding: Decoding settings (greedy, 128 new tokens by default).
        steering: Steering specs (:class:`~icon2_lens.directions.steer.SteeringSpec`) applied to
            every row (scalar γ only; per-row γ needs :func:`generate_rows`).
        batch_size: Rows per forward pass.
        backend: ``auto`` (fast twin when possible), ``fast`` or ``bridge``.
        progress: Show a progress bar.
        editors: Residual editors (:class:`~icon2_lens.model.hooks.ResidualEditor`), bound per
            batch with the prompts' indices as row ids.

    Returns:
        One :class:`Generation` per prompt; row ``i`` is seeded by its index ``i``.
    """
    decoding = decoding or Decoding()
    if len(prompts) == 0:
        raise ValueError("no prompts to generate from")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    rows = encode_prompts(model.tokenizer, prompts, max_len=n_ctx)
    out: list[Generation] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
        chunk = rows[start : start + batch_size]
        out.extend(
            generate_rows(
                model,
                chunk,
                decoding,
                steering=steering,
                row_seeds=range(start, start + len(chunk)),
                backend=backend,
                editors=editors,
                row_ids=range(start, start + len(chunk)),
            )
        )
    return out
