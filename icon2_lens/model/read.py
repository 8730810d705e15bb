"""Reading responses: one forward pass of the unsteered model over instruction + response.

:func:`read_responses` returns, per (instruction, response), the residual stream over the
response's tokens (``read="mean"``) or at its last token (``read="last"``) at every requested
layer, the mean NLL per response token and the response length. Any number of directions can
then be read off the result (:meth:`ResponseReadings.project`) without running the model again;
this is what every judge that reads the model (the inherent score, fluency) builds on.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> res = read_responses(tiny_model(), ["tell me a story"], ["the cat sat"], layers=[0, 2])
    >>> res.readings.shape, res.n_tokens.tolist()
    (torch.Size([1, 2, 16]), [3.0])
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._types import Directions, LensModel

from .chat import pad_left, render_chat
from .compat import accepts, forward_options
from .cost import count_forward
from .hooks import check_site, normalize_layers, resid_hook_name
from .twin import FAST_SITES, StopForward, block_modules, fast_twin, register_site_hook

__all__ = [
    "read_responses",
    "ResponseReadings",
    "READS",
    "REPEAT_NGRAM",
    "novel_tokens",
    "check_skip_repeats",
]

log = logging.getLogger(__name__)


READS: tuple[str, ...] = ("last", "mean")

#: The token n-gram whose repeats make text a loop: what the degeneration rule counts
#: (:func:`icon2_lens.judge.rules.repetition_rate`) and what the fluency judges leave out.
REPEAT_NGRAM = 4


@dataclass
class ResponseReadings:
    """What the unsteered model makes of each (instruction, response): residual readings, NLL, length.

    Attributes:
        layers: Layers read, in order.
        site: Residual site read.
        read: ``mean`` (over the response tokens) or ``last`` (its last token).
        readings: ``[n, layer, d_model]`` float32 residual readings.
        nll: ``[n]`` mean NLL per response token (NaN for an empty response).
        n_tokens: ``[n]`` response lengths in tokens.
        nll_tempered: ``[n]`` mean NLL per response token with the logits divided by the
            ``temperature`` asked for (``None`` when none was).
    """

    layers: list[int]
    site: str
    read: str
    readings: Float[Tensor, "n layer d_model"]
    nll: Float[Tensor, " n"]
    n_tokens: Float[Tensor, " n"]
    nll_tempered: Float[Tensor, " n"] | None = None

    def project(
        self, directions: Directions, layers: Sequence[int] | None = None
    ) -> Float[Tensor, " n"]:
        """Mean over ``layers`` (default: all read layers in the set) of reading · u_l, per response."""
        use = [x for x in self.layers if x in directions.layers] if layers is None else list(layers)
        missing = [x for x in use if x not in self.layers]
        if missing or not use:
            raise ValueError(f"layers {missing or use} were not read (read: {self.layers})")
        u = torch.stack([directions[x] for x in use]).to(torch.float32)
        idx = [self.layers.index(x) for x in use]
        return torch.einsum("nld,ld->n", self.readings[:, idx], u) / len(use)


def check_skip_repeats(n: object) -> int:
    """``n`` if it is a valid ``skip_repeats`` (an integer >= 0), else a ValueError naming the fix."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"skip_repeats must be an integer >= 0 (0 keeps every token), got {n!r}")
    return n


def novel_tokens(tokens: Sequence[int], n: int) -> list[bool]:
    """Per token, whether it does *not* complete a token ``n``-gram seen earlier in ``tokens``.

    The first ``n - 1`` tokens are always novel; with ``n = 0`` every token is.

    Example:
        >>> novel_tokens([5, 6, 7, 5, 6, 7, 5, 6], 2)
        [True, True, True, True, False, False, False, False]
    """
    if n <= 0:
        return [True] * len(tokens)
    seen: set[tuple[int, ...]] = set()
    out = []
    for t in range(len(tokens)):
        if t < n - 1:
            out.append(True)
            continue
        gram = tuple(tokens[t - n + 1 : t + 1])
        out.append(gram not in seen)
        seen.add(gram)
    return out


def _rows(model: LensModel, instructions: Sequence[str], responses: Sequence[str]):
    tok = model.tokenizer
    prompts = [
        tok(render_chat(tok, d), add_special_tokens=False)["input_ids"] for d in instructions
    ]
    answers = [tok(r, add_special_tokens=False)["input_ids"] if r else [] for r in responses]
    n_ctx = getattr(model.cfg, "n_ctx", None)
    rows = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        row = p + a
        if n_ctx and len(row) > n_ctx:
            raise ValueError(
                f"response {i} with its prompt is {len(row)} tokens, longer than the context ({n_ctx})"
            )
        rows.append(row)
    return rows, answers


def _forward_twin(model, twin, ids, mask, layers, site, keep):
    """Residuals ``{layer: [b, pos, d]}`` and the logits of the last ``keep`` positions, from the twin.

    With ``keep=0`` no logits are computed: the pass stops after the last requested layer.
    """
    mods = block_modules(model, twin)
    got: dict[int, Tensor] = {}
    handles = []
    last = max(layers)

    def keeper(layer):
        def fn(hidden: Tensor) -> None:
            got[layer] = hidden.float()
            if keep == 0 and layer == last:
                raise StopForward

        return fn

    try:
        for layer in layers:
            handles.append(register_site_hook(mods[layer], site, keeper(layer)))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if keep == 0:
            try:
                twin.base_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    **forward_options(twin.base_model, use_cache=False),
                )
            except StopForward:
                pass
            return got, None
        options = forward_options(twin, use_cache=False)
        if accepts(twin, "logits_to_keep"):
            options["logits_to_keep"] = keep
        logits = twin(input_ids=ids, attention_mask=mask, position_ids=positions, **options).logits
    finally:
        for h in handles:
            h.remove()
    return got, logits[:, -keep:]


def _forward_bridge(model, ids, mask, layers, site, keep):
    got: dict[int, Tensor] = {}

    def keeper(layer):
        def hook(resid: Tensor, hook) -> None:  # noqa: ARG001
            got[layer] = resid.float()

        return hook

    names = [(resid_hook_name(layer, site), keeper(layer)) for layer in layers]
    with model.hooks(fwd_hooks=names):
        if keep == 0:
            stop = max(layers) + 1
            model(
                ids,
                attention_mask=mask,
                return_type=None,
                stop_at_layer=stop if stop < model.cfg.n_layers else None,
            )
            return got, None
        logits = model(ids, attention_mask=mask)
    return got, logits[:, -keep:]


@torch.no_grad()
def read_responses(
    model: LensModel,
    instructions: Sequence[str],
    responses: Sequence[str],
    *,
    layers: Sequence[int],
    site: str = "resid_post",
    read: str = "mean",
    batch_size: int = 8,
    backend: str = "auto",
    nll: bool = True,
    temperature: float | None = None,
    skip_repeats: int = 0,
    progress: bool = False,
) -> ResponseReadings:
    """One forward pass per response under the unsteered model: residual readings, NLL and length.

    Any number of directions can then be read off the result (:meth:`ResponseReadings.project`)
    without running the model again.

    Args:
        model: The (unsteered) bridge.
        instructions: One user instruction per response (wrapped by the chat template).
        responses: The responses.
        layers: Layers to read.
        site: ``resid_pre`` or ``resid_post`` (``resid_mid`` needs ``backend="bridge"``).
        read: ``mean`` (averaged over every response token) or ``last`` (its last token). An
            empty response is read at the prompt's last token either way.
        batch_size: Rows per forward pass.
        backend: ``auto`` (the SDPA twin of :mod:`icon2_lens.model.twin` when possible, logits only for
            the response positions), ``fast`` or ``bridge``; equal up to float rounding.
        nll: Also compute the NLL (``False``: no logits at all, the pass stops after the last
            layer read; ``nll`` is then NaN).
        temperature: Also the mean NLL per token with the logits divided by this
            (``nll_tempered``; needs ``nll``).
        skip_repeats: With ``n > 0``, the NLL averages only the response tokens that do not
            complete a token ``n``-gram already present earlier in the response
            (:func:`novel_tokens`): a repetition loop is likely text to any model, and counted
            in the mean it would read as fluent. ``0`` averages every token.
        progress: Show a progress bar.
    """
    n = len(responses)
    if len(instructions) != n:
        raise ValueError("instructions and responses must have the same length")
    if n == 0:
        raise ValueError("no responses to score")
    if read not in READS:
        raise ValueError(f"unknown read {read!r}; use one of {', '.join(READS)}")
    check_site(site)
    check_skip_repeats(skip_repeats)
    if temperature is not None and not (nll and math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a positive number read with nll=True, got {temperature!r}"
        )
    layers = normalize_layers(list(layers), model.cfg.n_layers)
    if backend not in ("auto", "fast", "bridge"):
        raise ValueError(f"unknown backend {backend!r}; use auto, fast or bridge")
    twin = fast_twin(model) if backend != "bridge" and site in FAST_SITES else None
    if twin is not None and block_modules(model, twin) is None:
        twin = None
    if twin is None and backend == "fast":
        raise ValueError(
            "the fast backend is not available for this model or site; use backend='bridge'"
        )
    rows, answers = _rows(model, instructions, responses)
    readings = torch.zeros(n, len(layers), model.cfg.d_model)
    nlls = torch.full((n,), float("nan"))
    tempered = torch.full((n,), float("nan")) if temperature is not None else None
    order = sorted(range(n), key=lambda i: len(rows[i]))
    for start in tqdm(range(0, n, batch_size), desc="scoring", disable=not progress, unit="batch"):
        idx = order[start : start + batch_size]
        ids, mask = pad_left(model.tokenizer, [rows[i] for i in idx])
        keep = min(max(len(answers[i]) for i in idx) + 1, ids.shape[1]) if nll else 0
        if twin is not None:
            got, logits = _forward_twin(model, twin, ids, mask, layers, site, keep)
        else:
            got, logits = _forward_bridge(model, ids, mask, layers, site, keep)
        count_forward(int(mask.sum()))
        width = ids.shape[1]
        for b, i in enumerate(idx):
            k = len(answers[i])
            for j, layer in enumerate(layers):
                resid = got[layer][b]
                readings[i, j] = resid[-1] if read == "last" else resid[width - max(k, 1) :].mean(0)
            if k and logits is not None:
                z = logits[b, keep - k - 1 : keep - 1].float()
                target = ids[b, width - k :].view(-1, 1)
                use = torch.tensor(novel_tokens(answers[i], skip_repeats))
                nlls[i] = -torch.log_softmax(z, dim=-1).gather(-1, target)[use].mean()
                if tempered is not None:
                    z = z / temperature
                    tempered[i] = -torch.log_softmax(z, dim=-1).gather(-1, target)[use].mean()
    lengths = torch.tensor([float(len(a)) for a in answers])
    return ResponseReadings(list(layers), site, read, readings, nlls, lengths, tempered)
