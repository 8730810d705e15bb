"""Chat formatting: system prompt + user turn rendered with the model's own chat template.

Example:
    >>> from icon2_lens.testing import tiny_tokenizer
    >>> render_chat(tiny_tokenizer(), "what is a cat ?", system="you are helpful")
    '<bos><turn> system : you are helpful <end> <turn> user : what is a cat ? <end> <turn> assistant : '
"""

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ._types import Message

__all__ = ["require_chat_template", "chat_messages", "render_chat", "encode_prompts", "pad_left", "tokenize_prompts"]


def require_chat_template(tokenizer) -> None:
    """Raise a ``ValueError`` naming the fix if ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"the tokenizer of {name!r} has no chat template, so prompts cannot be formatted as "
            "chats. Use an instruction-tuned (chat) model, or set one yourself before calling, "
            "e.g. model.tokenizer.chat_template = '<jinja template>'."
        )


def chat_messages(user: str, system: str | None = None) -> list[Message]:
    """The message list for one optional system prompt and one user turn."""
    msgs: list[Message] = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    return msgs


def render_chat(
    tokenizer, user: str, *, system: str | None = None, add_generation_prompt: bool = True
) -> str:
    """Render one chat turn as text, ending with the assistant's generation prompt.

    The system prompt is passed as a ``system`` message. Templates that reject the system role
    (some Gemma templates) get it prepended to the user message instead, separated by a blank
    line.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        user: The user's message.
        system: Optional system prompt.
        add_generation_prompt: End with the tokens that open the assistant's turn.
    """
    require_chat_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(
            chat_messages(user, system), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja's TemplateError("System role not supported") and the like
        if system is None or "system" not in str(e).lower():
            raise
        return tokenizer.apply_chat_template(
            chat_messages(f"{system}\n\n{user}"),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )


def encode_prompts(tokenizer, texts: Sequence[str], *, max_len: int | None = None) -> list[list[int]]:
    """Token ids of rendered prompts, without added special tokens (the template holds them).

    Raises:
        ValueError: ``texts`` is empty, or a prompt is longer than ``max_len`` (the model's context).
    """
    if len(texts) == 0:
        raise ValueError("no prompts to tokenize: pass at least one instruction")
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if max_len is not None:
        for i, row in enumerate(rows):
            if len(row) > max_len:
                raise ValueError(
                    f"prompt {i} is {len(row)} tokens long but the model's context is {max_len} "
                    f"tokens; shorten it (it starts {texts[i][:60]!r}) or drop it"
                )
    return rows


def pad_left(tokenizer, rows: Sequence[Sequence[int]]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad token id lists into ``(ids, attention_mask)``; the last real token ends each row.

    Padding is done here rather than by the tokenizer so that one without a pad token works too
    (padded positions are masked out, so the id used does not matter).
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def tokenize_prompts(
    tokenizer, texts: Sequence[str], *, max_len: int | None = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokenize rendered prompts, left-padded, with their attention mask.

    Rendered chat templates already hold every special token they need, so none are added.
    Left padding puts the last real token of every row at position ``-1``.

    Args:
        tokenizer: The model's tokenizer.
        texts: Rendered prompts.
        max_len: The model's context length; longer prompts raise.

    Raises:
        ValueError: ``texts`` is empty, or a prompt is longer than ``max_len``.
    """
    return pad_left(tokenizer, encode_prompts(tokenizer, texts, max_len=max_len))
