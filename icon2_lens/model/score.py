"""Log-probability of plain texts under the model (steered or not), for likelihood comparisons.

Each text is scored as a sequence on its own, after one start token (the tokenizer's BOS, else
its EOS): ``log p(t_1 | start) + … + log p(t_n | start, t_1 … t_{n-1})``. With ``context``, the
first ``context[i]`` tokens of text ``i`` are read but not scored (a continuation's likelihood
given its context). No chat template is
applied, so this measures what the model thinks of the sentence itself. Texts are batched by
length and left-padded with an attention mask; every forward goes through the model's own
``forward``, so steering hooks active around the call (``with steer(...)``) apply.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> s = text_logprobs(tiny_model(), ["the cat sat", "a dog"])
    >>> s.n_tokens.tolist(), bool((s.total < 0).all())
    ([3, 2], True)
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._types import LensModel

from .chat import pad_left
from .cost import count_forward

__all__ = ["TextScores", "text_logprobs"]


@dataclass(frozen=True)
class TextScores:
    """Summed log-probabilities of texts and their lengths in tokens.

    Attributes:
        total: ``[n]`` summed log-probability of each text's tokens (float64).
        n_tokens: ``[n]`` number of tokens scored.
    """

    total: Float[Tensor, " n"]
    n_tokens: Int[Tensor, " n"]

    @property
    def mean(self) -> Float[Tensor, " n"]:
        """Length-normalised score: mean log-probability per token."""
        return self.total / self.n_tokens.clamp(min=1)


def _start_token(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a sequence with")


@torch.no_grad()
def text_logprobs(
    model: LensModel,
    texts: Sequence[str],
    *,
    context: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "scoring texts",
) -> TextScores:
    """Summed log-probability of every text (see the module docstring).

    Args:
        model: The model (its hooks, e.g. steering, apply).
        texts: Plain texts.
        context: Per text, how many of its leading tokens are context only (default none).
        batch_size: Texts per forward pass.
        progress: Show a progress bar.
        desc: Progress-bar label.

    Raises:
        ValueError: No texts, an empty text, nothing left to score after the context, or a text
            longer than the model's context.
    """
    if len(texts) == 0:
        raise ValueError("no texts to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tok = model.tokenizer
    start = _start_token(tok)
    rows = tok(list(texts), add_special_tokens=False)["input_ids"]
    n_ctx = getattr(model.cfg, "n_ctx", None)
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"text {i} is empty; drop it or give it some words")
        if n_ctx is not None and len(row) + 1 > n_ctx:
            raise ValueError(
                f"text {i} is {len(row)} tokens long, more than the model's context ({n_ctx})"
            )
    skip = list(context) if context is not None else [0] * len(rows)
    if len(skip) != len(rows):
        raise ValueError("context must give one count per text")
    for i, (row, k) in enumerate(zip(rows, skip)):
        if not 0 <= k < len(row):
            raise ValueError(
                f"text {i}: context of {k} tokens leaves nothing of its {len(row)} to score"
            )
    rows = [[start, *row] for row in rows]
    total = torch.zeros(len(rows), dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    device = getattr(model.cfg, "device", None) or "cpu"
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        ids, mask = pad_left(tok, [rows[i] for i in batch])
        logits = model(ids.to(device), attention_mask=mask.to(device))
        count_forward(int(mask.sum()))
        # score position p (predicting token p+1) when token p+1 lies after the text's context;
        # only those rows of the logits are normalised (the vocabulary is large)
        width = ids.shape[1]
        first = torch.tensor([width - len(rows[i]) + 1 + skip[i] for i in batch])
        keep = torch.arange(1, width).unsqueeze(0) >= first.unsqueeze(1)
        picked = logits[:, :-1][keep.to(logits.device)].float()
        target = ids[:, 1:][keep].to(picked.device)
        logp = picked.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
        row = torch.arange(len(batch)).unsqueeze(1).expand_as(keep)[keep]
        sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, row, logp.double().cpu())
        total[torch.tensor(batch)] = sums
    n_tokens = torch.tensor([len(r) - 1 - k for r, k in zip(rows, skip)], dtype=torch.long)
    return TextScores(total, n_tokens)
