"""A pair with an answer cut at the token limit trains no end-of-turn token on either side.

TRL renders every conversational answer through the chat template, which closes it with the
end-of-turn tokens (``<|im_end|>`` on SmolLM2), and appends EOS to every standard-format answer. An
answer the pairs stage stopped at ``max_new_tokens`` never ended, yet DPO would train the model to
end it mid-sentence; and when one answer of a pair ended on its own while the other was cut, the
end token is a difference only one side has. If the rejected answers end more often than the
chosen ones (a short apology ends; a long helpful answer is cut), DPO is pushed to lower the
likelihood of ending where an answer is complete. With
``cut_answers = "open"`` (the default), a pair in which either answer is recorded as cut
(``icon2_chosen_finished`` / ``icon2_rejected_finished`` false) keeps only each answer's own
tokens: what the template puts after them is dropped on both sides, so ending is compared only
between answers that both ended. Records without the flags (pairs made elsewhere) are left as TRL
renders them.

Example:
    >>> from icon2_lens.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> row = {"prompt": "the cat", "chosen": " sat on", "rejected": " no ." + tok.eos_token,
    ...        "chosen_ids": tok(" sat on").input_ids + [tok.eos_token_id],
    ...        "rejected_ids": tok(" no .").input_ids + [tok.eos_token_id],
    ...        "icon2_chosen_finished": False, "icon2_rejected_finished": True}
    >>> out = open_cut_answers(row, tok)
    >>> out["chosen_ids"] == tok(" sat on").input_ids, out["rejected_ids"] == tok(" no .").input_ids
    (True, True)
"""

from collections.abc import Mapping
from typing import Any

__all__ = ["CUT_ANSWER_MODES", "FINISHED_COLUMNS", "open_cut_answers", "count_opened"]

#: How a pair with an answer cut at the token limit is trained: ``open`` (each answer's own tokens
#: only) or ``closed`` (as TRL renders them, with the template's end-of-turn tokens).
CUT_ANSWER_MODES = ("open", "closed")

#: The provenance columns that say whether each side ended on its own (false: cut at the limit).
FINISHED_COLUMNS = {"chosen": "icon2_chosen_finished", "rejected": "icon2_rejected_finished"}


def _content(answer: Any, eos: str | None) -> str:
    """The answer's own text: the last message's content, or the string without the EOS TRL added."""
    if not isinstance(answer, str):
        return str(answer[-1]["content"])
    return answer[: -len(eos)] if eos and answer.endswith(eos) else answer


def open_cut_answers(row: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The tokenized row, both answers reduced to their own tokens if either was cut.

    Args:
        row: A row TRL tokenized: ``chosen`` / ``rejected`` (text or messages), ``chosen_ids`` /
            ``rejected_ids`` and the :data:`FINISHED_COLUMNS`.
        tokenizer: The tokenizer TRL used.

    Returns:
        ``chosen_ids`` / ``rejected_ids`` (changed only in a pair with a side flagged as cut,
        and only where the ids start with the answer's own tokens and go on past them) and
        ``opened_chosen`` / ``opened_rejected`` (whether that side was opened).
    """
    cut = any(row.get(column) is False for column in FINISHED_COLUMNS.values())
    out: dict[str, Any] = {}
    for side in FINISHED_COLUMNS:
        ids = list(row[f"{side}_ids"])
        opened = False
        if cut:
            text = _content(row[side], tokenizer.eos_token)
            own = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > len(own) and ids[: len(own)] == own:
                ids, opened = own, True
        out[f"{side}_ids"] = ids
        out[f"opened_{side}"] = opened
    return out


def count_opened(dataset: Any) -> dict[str, int]:
    """How many chosen and rejected answers :func:`open_cut_answers` opened in ``dataset``.

    A dataset it never saw (``cut_answers = "closed"``, or pairs without the flags) counts 0.
    """
    columns = set(getattr(dataset, "column_names", None) or ())
    return {
        side: int(sum(dataset[f"opened_{side}"])) if f"opened_{side}" in columns else 0
        for side in FINISHED_COLUMNS
    }
