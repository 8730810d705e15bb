"""Judge responses with the unsteered model itself: inherent score, fluency, repetition, length.

No external reward model is used anywhere in icon2-lens; every number here says which judge made
it:

``projection`` (inherent score)
    Residual stream over the response's tokens (the instruction wrapped by the chat template,
    followed by the response; ``read="mean"``, or only its last token with ``read="last"``),
    dotted with the criterion's unit direction at each layer and averaged over the layers — the
    reading of inherent consistency, applied to the answer.
``nll``
    Mean negative log-likelihood per response token under the *unsteered* model (``exp`` of it
    is the perplexity): a fluency judge that penalises the damage steering does.
``repetition``
    Fraction of repeated token 4-grams (0 = none repeated; a loop tends to 1).

Example:
    >>> repetition_rate([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4])
    0.5555555555555556
"""

import logging
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ._types import LensModel
from .chat import pad_left, render_chat
from .directions import DirectionSet

__all__ = ["repetition_rate", "degeneracy", "score_responses", "READS"]

log = logging.getLogger(__name__)


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    """Share of the token ``n``-grams that repeat an earlier one (0.0 for short texts)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def degeneracy(text: str, tokens: Sequence[int], *, max_repetition: float = 0.5, min_chars: int = 1) -> str | None:
    """Why a response is degenerate (``empty`` or ``repetition``), or ``None`` if it is usable.

    A response is a repetition loop when more than ``max_repetition`` of its token 4-grams repeat
    (ordinary prose stays well under 0.2; a loop climbs towards 1).
    """
    if len(text.strip()) < min_chars:
        return "empty"
    if len(tokens) >= 16 and repetition_rate(tokens) > max_repetition:
        return "repetition"
    return None


READS: tuple[str, ...] = ("last", "mean")


def _keeper(cache: dict[str, Tensor], name: str, read: str):
    def keep(resid: Tensor, hook) -> None:  # noqa: ARG001
        cache[name] = resid[:, -1].float() if read == "last" else resid.float()

    return keep


@torch.no_grad()
def score_responses(
    model: LensModel,
    instructions: Sequence[str],
    responses: Sequence[str],
    directions: Sequence[DirectionSet],
    *,
    layers: Sequence[Sequence[int]] | None = None,
    read: str = "mean",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Float[Tensor, " n"]]:
    """Inherent score and NLL of each response under the unsteered model.

    Args:
        model: The (unsteered) bridge.
        instructions: One user instruction per response.
        responses: The responses to judge.
        directions: One direction set per response (its criterion's).
        layers: Per response, the layers to average the projection over (default: all of the set's).
        read: Where the residual is read: ``mean`` (default: averaged over every response
            token) or ``last`` (the response's last token, as inherent consistency reads an
            instruction). On the embedded model the mean reading follows the steering strength
            far more faithfully (median per-instruction Spearman correlation between γ and score
            0.94-0.97 against 0.76-0.88 for ``last``, 40 instructions × 10 γ × 3 intervals). An
            empty response is read at the prompt's last token either way.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.

    Returns:
        ``projection``, ``nll`` (mean per response token; NaN for an empty response) and
        ``n_tokens``, each ``[n]``.
    """
    n = len(responses)
    if not (len(instructions) == n == len(directions)):
        raise ValueError("instructions, responses and directions must have the same length")
    if n == 0:
        raise ValueError("no responses to score")
    if read not in READS:
        raise ValueError(f"unknown read {read!r}; use one of {', '.join(READS)}")
    tok = model.tokenizer
    layers = [list(ds.layers) for ds in directions] if layers is None else [list(x) for x in layers]
    need = sorted({layer for ls in layers for layer in ls})
    sites = {ds.site for ds in directions}
    if len(sites) != 1:
        raise ValueError("all direction sets must be read at the same site")
    site = sites.pop()
    prompts = [tok(render_chat(tok, d), add_special_tokens=False)["input_ids"] for d in instructions]
    answers = [tok(r, add_special_tokens=False)["input_ids"] if r else [] for r in responses]
    n_ctx = getattr(model.cfg, "n_ctx", None)
    rows = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        row = p + a
        if n_ctx and len(row) > n_ctx:
            raise ValueError(f"response {i} with its prompt is {len(row)} tokens, longer than the context ({n_ctx})")
        rows.append(row)
    projection = torch.zeros(n)
    nll = torch.full((n,), float("nan"))
    order = sorted(range(n), key=lambda i: len(rows[i]))
    names = [f"blocks.{layer}.hook_{site}" for layer in need]
    for start in tqdm(range(0, n, batch_size), desc="scoring", disable=not progress, unit="batch"):
        idx = order[start : start + batch_size]
        ids, mask = pad_left(tok, [rows[i] for i in idx])
        cache: dict[str, Tensor] = {}

        with model.hooks(fwd_hooks=[(name, _keeper(cache, name, read)) for name in names]):
            logits = model(ids, attention_mask=mask)
        logp = torch.log_softmax(logits.float(), dim=-1)
        width = ids.shape[1]
        for b, i in enumerate(idx):
            ds = directions[i]
            k = len(answers[i])
            vals = []
            for layer in layers[i]:
                resid = cache[names[need.index(layer)]][b]
                if read == "mean":
                    resid = resid[width - max(k, 1) :].mean(0)
                vals.append(float(resid @ ds[layer]))
            projection[i] = sum(vals) / len(vals)
            if k:
                targets = ids[b, width - k :]
                pred = logp[b, width - k - 1 : width - 1]
                nll[i] = -pred.gather(-1, targets.view(-1, 1)).mean()
    return {
        "projection": projection,
        "nll": nll,
        "n_tokens": torch.tensor([float(len(a)) for a in answers]),
    }
