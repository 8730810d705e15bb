"""Contrastive activations: every instruction read under a positive and a negative system prompt.

For each instruction ``d`` the model reads two chats that differ only in the system prompt, each
ending with the assistant's generation prompt; the residual stream at the last token is kept at
every chosen layer. Extraction, the wording check and the audit all read contrasts this way.

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

from icon2_lens._types import LensModel
from icon2_lens.model.chat import render_chat, require_chat_template
from icon2_lens.model.collect import collect_resid

from .criteria import Criterion

__all__ = ["contrast_activations"]


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
