"""Contrastive activations: every instruction read under a positive and a negative system prompt.

:func:`contrast_activations` (Icon²'s reading): for each instruction ``d`` the model reads two
chats that differ only in the system prompt, each ending with the assistant's generation prompt;
the residual stream at the last token is kept at every chosen layer. Extraction, the wording
check and the audit all read contrasts this way.

:func:`answer_contrast_activations` reads where the behaviour lives instead, as representation
engineering and contrastive activation addition read it: the model *answers* each instruction
under each system prompt (greedy), and each answer is then read without any system prompt, the
residual averaged over the answer's tokens. What separates the two readings is what the answers
do differently, not the wording of the prompt that asked for it.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.directions.criteria import get_criteria
    >>> pos, neg = contrast_activations(tiny_model(), get_criteria(["honesty"])[0], ["tell me a story"], progress=False)
    >>> pos.shape, bool((pos - neg).abs().sum() > 0)
    (torch.Size([1, 3, 16]), True)
"""

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._types import LensModel
from icon2_lens.model.chat import encode_prompts, render_chat, require_chat_template
from icon2_lens.model.collect import collect_resid
from icon2_lens.model.generate import Decoding, generate_rows
from icon2_lens.model.read import read_responses

from .criteria import Criterion

__all__ = ["contrast_activations", "answer_contrast_activations", "contrast_answers"]


def contrast_activations(
    model: LensModel,
    criterion: Criterion,
    instructions: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
    backend: str = "fast",
) -> tuple[Float[Tensor, "n layer d_model"], Float[Tensor, "n layer d_model"]]:
    """Activations of every instruction under the criterion's positive and negative prompt.

    Each prompt is read in its own pass over the instructions, so that (with the ``fast``
    backend) the system prompt shared by all of them is computed once.
    """
    if len(instructions) == 0:
        raise ValueError("the instruction list is empty: pass at least one instruction")
    require_chat_template(model.tokenizer)
    out = []
    for system in (criterion.positive, criterion.negative):
        texts = [render_chat(model.tokenizer, d, system=system) for d in instructions]
        out.append(
            collect_resid(
                model,
                texts,
                layers=layers,
                site=site,
                batch_size=batch_size,
                progress=progress,
                desc=f"{criterion.name}: caching",
                backend=backend,
            )
        )
    return out[0], out[1]


def contrast_answers(
    model: LensModel,
    criterion: Criterion,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """The model's greedy answers to every instruction under the positive and the negative prompt."""
    if len(instructions) == 0:
        raise ValueError("the instruction list is empty: pass at least one instruction")
    require_chat_template(model.tokenizer)
    tok = model.tokenizer
    decoding = Decoding(max_new_tokens=max_new_tokens)
    out = []
    for side, system in (("positive", criterion.positive), ("negative", criterion.negative)):
        rows = encode_prompts(
            tok,
            [render_chat(tok, d, system=system) for d in instructions],
            max_len=getattr(model.cfg, "n_ctx", None),
        )
        texts: list[str] = []
        starts = range(0, len(rows), batch_size)
        for s in tqdm(starts, desc=f"{criterion.name}: {side} answers", disable=not progress):
            gens = generate_rows(model, rows[s : s + batch_size], decoding)
            texts.extend(g.text for g in gens)
        out.append(texts)
    return out[0], out[1]


def answer_contrast_activations(
    model: LensModel,
    criterion: Criterion,
    instructions: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = True,
    backend: str = "fast",
    max_new_tokens: int = 48,
) -> tuple[Float[Tensor, "n layer d_model"], Float[Tensor, "n layer d_model"]]:
    """Mean residual over the answers written under each prompt, read with no system prompt.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> from icon2_lens.directions.criteria import get_criteria
        >>> pos, neg = answer_contrast_activations(tiny_model(), get_criteria(["honesty"])[0],
        ...     ["tell me a story"], max_new_tokens=4, progress=False)
        >>> pos.shape
        torch.Size([1, 3, 16])
    """
    positive, negative = contrast_answers(
        model,
        criterion,
        instructions,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    n_layers = model.cfg.n_layers
    read = list(range(n_layers)) if layers is None else list(layers)
    return tuple(  # type: ignore[return-value]
        read_responses(
            model,
            instructions,
            answers,
            layers=read,
            site=site,
            read="mean",
            batch_size=batch_size,
            backend="auto" if backend == "fast" else backend,
            nll=False,
        ).readings
        for answers in (positive, negative)
    )
