"""Reading the chat template itself: where the user's text starts and how a user turn ends.

Magpie-style self-synthesis feeds a chat model only the part of its template that precedes the
user's words, so the model writes a user request itself. Rather than keep a per-model table of
such prefixes, they are derived from the tokenizer's own template: render a conversation whose
user message is a unique marker string, and cut the rendered text at the marker. What precedes it
is the prefix (including any default system prompt the template inserts); what follows it, up to
the next turn, is the end-of-turn text that closes a user message.

Example:
    >>> from icon2_lens.testing import tiny_tokenizer
    >>> user_turn_template(tiny_tokenizer())
    UserTurnTemplate(prefix='<bos><turn> user : ', end_of_turn=' <end> ')
"""

from dataclasses import dataclass

from .chat import chat_messages, require_chat_template

__all__ = ["UserTurnTemplate", "user_turn_template"]

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
