"""One preference record type for every pair source, and the checks TRL needs of it.

Records follow TRL's explicit-prompt preference format, either *conversational* (``prompt``,
``chosen`` and ``rejected`` are lists of ``{"role", "content"}`` messages; TRL applies the chat
template itself) or *standard* (three strings), plus flat ``icon2_*`` provenance columns::

    {"prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "icon2_index": 17, "icon2_criterion": "helpfulness", "icon2_source": "icon2", ...}

:func:`make_record` builds one, :func:`sort_pair` files a generated pair as kept or dropped (with
the reason), :func:`pair_counts` totals a run, and :func:`validate_pairs` checks **every** record
(TRL decides the format from the first record only and would mis-tokenise a mixed file).

Example:
    >>> record = {"prompt": [{"role": "user", "content": "tell me a story"}],
    ...           "chosen": [{"role": "assistant", "content": "the cat sat on the mat ."}],
    ...           "rejected": [{"role": "assistant", "content": "no ."}],
    ...           "icon2_criterion": "helpfulness"}
    >>> validate_pairs([record])
    'conversational'
"""

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from icon2_lens._files import read_utf8
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.judge.rules import degeneracy
from icon2_lens.model.generate import Generation

log = logging.getLogger(__name__)

__all__ = [
    "answer_pairs",
    "prompt_texts",
    "PAIR_FIELDS",
    "PROVENANCE_PREFIX",
    "PairFormat",
    "KeptInstruction",
    "PairsResult",
    "make_record",
    "pair_verdict",
    "sort_pair",
    "pair_counts",
    "read_pairs",
    "validate_pairs",
    "check_pair_hygiene",
    "MAX_BAD_PAIR_SHARE",
]

PAIR_FIELDS: tuple[str, str, str] = ("prompt", "chosen", "rejected")
PROVENANCE_PREFIX = "icon2_"
PairFormat = Literal["conversational", "standard"]


@dataclass
class PairsResult:
    """What :func:`generate_pairs` produced (including pairs found already written).

    Attributes:
        records: Kept preference records, in instruction order.
        dropped: Dropped instructions with their reason and both responses.
        counts: Totals: instructions, pairs, dropped per reason, chosen/rejected degenerate.
    """

    records: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    counts: dict[str, Any]


def pair_verdict(
    c: Generation, r: Generation, max_repetition: float
) -> tuple[str | None, str | None]:
    """``(drop reason or None, why the rejected response is degenerate or None)`` for one pair."""
    c_bad = degeneracy(c.text, c.token_ids, max_repetition=max_repetition)
    r_bad = degeneracy(r.text, r.token_ids, max_repetition=max_repetition)
    reason = None
    if c_bad:
        reason = f"chosen_{c_bad}"
    elif r_bad:
        reason = f"rejected_{r_bad}"
    elif c.text == r.text:
        reason = "identical"
    return reason, r_bad


def sort_pair(
    item: KeptInstruction,
    c: Generation,
    r: Generation,
    prov: dict[str, Any],
    max_repetition: float,
    pairs: list[dict[str, Any]],
    drops: list[dict[str, Any]],
) -> None:
    """Build the record of one chosen/rejected pair and append it to ``pairs`` or, with its drop
    reason, to ``drops``."""
    reason, r_bad = pair_verdict(c, r, max_repetition)
    rec = make_record(item, c.text, r.text, prov)
    if reason is None:
        pairs.append(rec)
    else:
        rec["icon2_drop_reason"] = reason
        rec["icon2_rejected_degenerate"] = r_bad
        drops.append(rec)


def make_record(
    item: KeptInstruction, chosen: str, rejected: str, prov: dict[str, Any]
) -> dict[str, Any]:
    """The conversational preference record of one instruction, with its ``icon2_*`` provenance."""
    return {
        "prompt": [{"role": "user", "content": item.instruction}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "icon2_index": item.index,
        "icon2_criterion": item.criterion,
        # JSON has no NaN: an unknown score is written as null
        "icon2_consistency": item.consistency if math.isfinite(item.consistency) else None,
        **prov,
    }


def pair_counts(
    records: Sequence[Mapping], dropped: Sequence[Mapping], n_instructions: int
) -> dict[str, Any]:
    """Totals over a pairs run: kept pairs, drops per reason, and degenerate rates before dropping."""
    reasons = Counter(d["icon2_drop_reason"] for d in dropped)
    n_done = len(records) + len(dropped)
    chosen_bad = sum(1 for d in dropped if d["icon2_drop_reason"].startswith("chosen_"))
    rejected_bad = sum(
        1
        for d in dropped
        if d["icon2_drop_reason"].startswith("rejected_") or d.get("icon2_rejected_degenerate")
    )
    return {
        "instructions": n_instructions,
        "done": n_done,
        "pairs": len(records),
        "dropped": dict(sorted(reasons.items())),
        "chosen_degenerate_rate": chosen_bad / n_done if n_done else float("nan"),
        "rejected_degenerate_rate": rejected_bad / n_done if n_done else float("nan"),
    }


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file of preference records (one JSON object per line).

    Args:
        path: The ``.jsonl`` file. Blank lines are skipped.

    Returns:
        The records, in file order (not validated; see :func:`validate_pairs`).

    Raises:
        ValueError: On a malformed line (the message names the file and the 1-based line number),
            a line that is not a JSON object, or a file without records.

    Example:
        >>> import json, tempfile
        >>> rec = {"prompt": "the cat", "chosen": " sat .", "rejected": " no ."}
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(json.dumps(rec) + "\\n\\n")
        >>> read_pairs(f.name) == [rec]
        True
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass the pairs.jsonl file inside it")
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; pass the pairs.jsonl that 'icon2-lens pairs' wrote"
        )
    records = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), start=1):
        if line.strip():
            records.append(_parse_line(line, path, lineno))
    if not records:
        raise ValueError(
            f"{path} holds no preference records (it is empty or only blank lines); pass the "
            "pairs.jsonl that 'icon2-lens pairs' wrote"
        )
    return records


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); every non-blank "
            "line must hold one JSON object"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def validate_pairs(records: Sequence[Mapping[str, Any]]) -> PairFormat:
    """Check preference records and return their (single) format.

    Args:
        records: Records with ``prompt``, ``chosen`` and ``rejected`` (extra keys are allowed).

    Returns:
        ``"conversational"`` (message lists) or ``"standard"`` (strings).

    Raises:
        ValueError: Naming the record index and the fix, when there are no records, a record lacks
            a field or has an empty one, formats are mixed, a message lacks ``role`` / ``content``,
            ``chosen`` / ``rejected`` is not an assistant turn, or a prompt ends with one.

    Example:
        >>> validate_pairs([{"prompt": "the cat", "chosen": " sat .", "rejected": " no ."}])
        'standard'
        >>> validate_pairs([{"prompt": "the cat", "chosen": "", "rejected": " no ."}])
        Traceback (most recent call last):
        ...
        ValueError: records[0]['chosen'] is empty; fill it or drop the record (DPO scores the completion tokens)
    """
    if len(records) == 0:
        raise ValueError(
            "no preference records: DPO needs at least one {prompt, chosen, rejected} record"
        )
    first = _record_format(records[0], 0)
    for i in range(1, len(records)):
        fmt = _record_format(records[i], i)
        if fmt != first:
            raise ValueError(
                f"records[{i}] is in {fmt} format but records[0] is {first}: TRL reads the format "
                "from the first record only, so convert all records to one format (message lists "
                "for chat models, strings for base models)"
            )
    check_pair_hygiene(records)
    return first


#: The largest share of records that may be duplicates or have chosen == rejected (warned below).
MAX_BAD_PAIR_SHARE = 0.05


def check_pair_hygiene(
    records: Sequence[Mapping[str, Any]], *, max_share: float = MAX_BAD_PAIR_SHARE
) -> dict[str, int]:
    """Count repeated (prompt, chosen, rejected) triples and records whose chosen equals rejected.

    A repeated triple weighs one preference several times; chosen == rejected has a DPO loss of
    log 2 and a zero gradient whatever the model does, so both only pretend to be data. A few are
    logged as a warning; above ``max_share`` of the records they are refused.

    Returns:
        ``{"duplicates": n, "identical": n}`` (a record repeated k times counts k - 1).

    Raises:
        ValueError: Either count exceeds ``max_share`` of the records.

    Example:
        >>> rec = {"prompt": "p", "chosen": "a", "rejected": "b"}
        >>> check_pair_hygiene([rec, {**rec, "prompt": "q"}])
        {'duplicates': 0, 'identical': 0}
        >>> check_pair_hygiene([rec] * 4)
        Traceback (most recent call last):
        ...
        ValueError: 3 of 4 preference records repeat an earlier (prompt, chosen, rejected) triple (more than 5%); drop the duplicates (they weigh one preference several times)
    """
    keys = [json.dumps([r.get(k) for k in PAIR_FIELDS], sort_keys=True) for r in records]
    counts = {
        "duplicates": len(keys) - len(set(keys)),
        "identical": sum(
            json.dumps(r.get("chosen"), sort_keys=True)
            == json.dumps(r.get("rejected"), sort_keys=True)
            for r in records
        ),
    }
    n = len(records)
    what = {
        "duplicates": "repeat an earlier (prompt, chosen, rejected) triple",
        "identical": "have chosen == rejected",
    }
    fix = {
        "duplicates": "drop the duplicates (they weigh one preference several times)",
        "identical": "drop them (their DPO gradient is zero: they teach nothing)",
    }
    for key, k in counts.items():
        if k and k > max_share * n:
            raise ValueError(
                f"{k} of {n} preference records {what[key]} (more than {max_share:.0%}); {fix[key]}"
            )
        if k:
            log.warning("%d of %d preference records %s; %s", k, n, what[key], fix[key])
    return counts


def _record_format(record: Mapping[str, Any], i: int) -> PairFormat:
    if not isinstance(record, Mapping):
        raise ValueError(
            f"records[{i}] is a {type(record).__name__}, not a mapping with prompt/chosen/rejected"
        )
    missing = [k for k in PAIR_FIELDS if k not in record]
    if missing:
        raise ValueError(
            f"records[{i}] lacks {', '.join(repr(k) for k in missing)}: every record needs 'prompt', "
            "'chosen' and 'rejected' (TRL's explicit-prompt preference format; move a shared "
            "prefix of an implicit-prompt record into 'prompt')"
        )
    values = [record[k] for k in PAIR_FIELDS]
    if all(isinstance(v, str) for v in values):
        _check_standard(record, i)
        return "standard"
    if all(isinstance(v, (list, tuple)) for v in values):
        _check_conversational(record, i)
        return "conversational"
    kinds = ", ".join(f"{k}: {type(record[k]).__name__}" for k in PAIR_FIELDS)
    raise ValueError(
        f"records[{i}] mixes field types ({kinds}); use strings for all three (standard format) "
        "or lists of {'role', 'content'} messages for all three (conversational format)"
    )


def _check_standard(record: Mapping[str, Any], i: int) -> None:
    for k in PAIR_FIELDS:
        if not record[k].strip():
            raise ValueError(
                f"records[{i}][{k!r}] is empty; fill it or drop the record (DPO scores the completion tokens)"
            )


def _check_conversational(record: Mapping[str, Any], i: int) -> None:
    for k in PAIR_FIELDS:
        if len(record[k]) == 0:
            raise ValueError(
                f"records[{i}][{k!r}] is an empty message list; fill it or drop the record"
            )
        for j, message in enumerate(record[k]):
            _check_message(message, f"records[{i}][{k!r}][{j}]")
    for k in ("chosen", "rejected"):
        roles = sorted({m["role"] for m in record[k]} - {"assistant"})
        if roles:
            raise ValueError(
                f"records[{i}][{k!r}] holds a {roles[0]!r} turn; chosen and rejected must be assistant "
                "turns only, e.g. [{'role': 'assistant', 'content': '...'}] (system and user turns "
                "belong in 'prompt')"
            )
    if record["prompt"][-1]["role"] == "assistant":
        raise ValueError(
            f"records[{i}]['prompt'] ends with an assistant turn; the prompt must end with the turn "
            "the completion answers (usually 'user'), and the answer goes in chosen/rejected"
        )


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ValueError(
            f"{where} must be a message {{'role': ..., 'content': ...}}, got {message!r:.80}"
        )
    if not isinstance(message["content"], str) or not message["content"].strip():
        raise ValueError(f"{where} has empty or non-text content; fill it or drop the record")


def answer_pairs(records: Sequence[dict]) -> list[tuple[str, str]]:
    """``(chosen, rejected)`` texts of TRL preference records (standard or conversational)."""

    def text(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
        raise ValueError(
            f"an answer must be a string or a list of messages, got {type(value).__name__}"
        )

    return [(text(r["chosen"]), text(r["rejected"])) for r in records]


def prompt_texts(records: Sequence[dict]) -> list[str]:
    """The user request of each record: the prompt string, or its last user message's text.

    Example:
        >>> prompt_texts([{"prompt": "hi"}, {"prompt": [{"role": "user", "content": "yo"}]}])
        ['hi', 'yo']
    """

    def text(value, i: int) -> str:
        if isinstance(value, str):
            return value
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if not isinstance(value, list) or not users:
            raise ValueError(f"records[{i}]['prompt'] has no user message; give it one")
        return str(users[-1].get("content", ""))

    return [text(r["prompt"], i) for i, r in enumerate(records)]
