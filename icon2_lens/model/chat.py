"""Chat formatting with the model's own chat template, and reading the template itself.

:func:`render_chat` renders a system prompt and a user turn, ending with the assistant's
generation prompt; :func:`tokenize_prompts` left-pads rendered prompts for a batch.
:func:`user_turn_template` reads the template itself: Magpie-style self-synthesis feeds a chat
model only the part of its template that precedes the user's words, so the model writes a user
request itself. Rather than keep a per-model table of such prefixes, they are derived from the
tokenizer's own template: render a conversation whose user message is a unique marker string,
and cut the rendered text at the marker. What precedes it is the prefix (including any default
system prompt the template inserts); what follows it, up to the next turn, is the end-of-turn
text that closes a user message.

Example:
    >>> from icon2_lens.testing import tiny_tokenizer
    >>> render_chat(tiny_tokenizer(), "what is a cat ?", system="you are helpful")
    '<bos><turn> system : you are helpful <end> <turn> user : what is a cat ? <end> <turn> assistant : '
    >>> user_turn_template(tiny_tokenizer())
    UserTurnTemplate(prefix='<bos><turn> user : ', end_of_turn=' <end> ')
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from icon2_lens._types import Message

__all__ = [
    "require_chat_template",
    "chat_messages",
    "render_chat",
    "encode_prompts",
    "pad_left",
    "tokenize_prompts",
    "UserTurnTemplate",
    "user_turn_template",
]


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


def encode_prompts(
    tokenizer, texts: Sequence[str], *, max_len: int | None = None
) -> list[list[int]]:
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


def pad_left(
    tokenizer, rows: Sequence[Sequence[int]]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
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
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
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


_MARKER = "\u2063icon2-lens-user-text\u2063"


@dataclass(frozen=True)
class UserTurnTemplate:
    """The text around a user message in a chat template.

    Attributes:
        prefix: Everything before the user's words (feed this alone to make the model write a
            request).
        end_of_turn: What the template puts right after the user's words, before the assistant's
            turn (e.g. ``"<|im_end|>\\n"`` for ChatML); generation of a request stops there.
    """

    prefix: str
    end_of_turn: str


def user_turn_template(tokenizer, *, system: str | None = None) -> UserTurnTemplate:
    """Derive the user-turn prefix and end-of-turn text from ``tokenizer``'s chat template.

    Args:
        tokenizer: A tokenizer with a chat template.
        system: Optional system prompt to render before the user turn; ``None`` keeps whatever
            the template does on its own (some insert a default system prompt).

    Raises:
        ValueError: No chat template, or a template that does not copy the user's text verbatim.
    """
    require_chat_template(tokenizer)
    with_turn = tokenizer.apply_chat_template(
        chat_messages(_MARKER, system), tokenize=False, add_generation_prompt=False
    )
    with_prompt = tokenizer.apply_chat_template(
        chat_messages(_MARKER, system), tokenize=False, add_generation_prompt=True
    )
    if with_turn.count(_MARKER) != 1:
        raise ValueError(
            "the chat template does not copy the user's message verbatim exactly once, so the "
            "user-turn prefix cannot be derived from it; pass the prefix yourself"
        )
    prefix, after = with_turn.split(_MARKER)
    # The generation prompt (e.g. "<|im_start|>assistant\n") follows the closed user turn; what
    # the two renderings share after the marker is the end of the user turn.
    after_prompt = with_prompt.split(_MARKER)[1]
    end = after if after_prompt.startswith(after) else _common_prefix(after, after_prompt)
    if not end.strip():
        raise ValueError(
            "the chat template puts nothing after the user's message, so the end of a user turn "
            "cannot be told apart; pass the end-of-turn text yourself"
        )
    return UserTurnTemplate(prefix=prefix, end_of_turn=end)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
