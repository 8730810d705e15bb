"""Built-in extraction instructions: everyday user requests with a fixed held-out split.

A separate benign/harmful evaluation set ships alongside them (:func:`load_eval_instructions`).

Example:
    >>> len(load_instructions("train")), len(load_instructions("heldout"))
    (256, 96)
"""

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from icon2_lens._files import read_utf8

__all__ = ["load_eval_instructions", "load_instructions", "read_instruction_file"]

EVAL_KINDS = ("benign", "harmful")


@lru_cache(maxsize=1)
def _builtin() -> dict:
    with (
        resources.files("icon2_lens.instructions")
        .joinpath("data/instructions.json")
        .open(encoding="utf-8") as f
    ):
        return json.load(f)


@lru_cache(maxsize=1)
def _builtin_eval() -> tuple[dict, ...]:
    path = resources.files("icon2_lens.instructions").joinpath("data/eval_instructions.jsonl")
    with path.open(encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_eval_instructions(kind: str | None = None, n: int | None = None) -> list[dict]:
    """The built-in evaluation instructions, optionally of one ``kind``, first ``n`` of them.

    A separate set from the train/held-out extraction splits (it shares no instruction with
    either): 96 everyday ``"benign"`` requests and 32 ``"harmful"`` ones a responsible assistant
    should decline or redirect, for measuring helpfulness and refusal on text the directions
    never saw. Records come back in file order (``b001``... then ``h001``...) and are fresh
    copies, so editing them does not touch the built-in set.

    Args:
        kind: ``"benign"``, ``"harmful"``, or ``None`` for both.
        n: Keep only the first ``n`` records after filtering; ``None`` keeps all of them.

    Returns:
        Dicts with ``id``, ``instruction``, ``kind`` and ``category`` (one of e.g.
        ``"fraud"``, ``"privacy"``, ``"weapons"`` for harmful records, ``None`` for benign).

    Raises:
        ValueError: Unknown ``kind``, ``n`` below 1, or more records asked for than exist.

    Example:
        >>> from collections import Counter
        >>> Counter(r["kind"] for r in load_eval_instructions())
        Counter({'benign': 96, 'harmful': 32})
        >>> [r["id"] for r in load_eval_instructions("harmful", n=2)]
        ['h001', 'h002']
        >>> load_eval_instructions("benign", n=1)[0]["category"] is None
        True
    """
    if kind is not None and kind not in EVAL_KINDS:
        raise ValueError(
            f"unknown kind {kind!r}; use one of {', '.join(map(repr, EVAL_KINDS))} or None"
        )
    items = [
        {
            "id": r["id"],
            "instruction": r["instruction"],
            "kind": r["kind"],
            "category": r.get("category"),
        }
        for r in _builtin_eval()
        if kind is None or r["kind"] == kind
    ]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if n > len(items):
            what = f"{kind} evaluation" if kind else "evaluation"
            raise ValueError(
                f"asked for {n} {what} instructions but only {len(items)} are built in; "
                "pass fewer or supply your own with an instructions file"
            )
        items = items[:n]
    return items


def load_instructions(split: str = "train", n: int | None = None) -> list[str]:
    """The built-in instructions of ``split`` (``"train"`` or ``"heldout"``), first ``n`` of them.

    The two splits never share an instruction, so held-out diagnostics are really held out.
    """
    data = _builtin()
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")
    items = list(data[split])
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if n > len(items):
            raise ValueError(
                f"asked for {n} {split} instructions but only {len(items)} are built in; "
                "pass fewer or supply your own with an instructions file"
            )
        items = items[:n]
    return items


def read_instruction_file(path: str | Path) -> list[str]:
    """Read instructions from a ``.txt`` (one per line) or ``.jsonl`` (``{"instruction": ...}``).

    Raises:
        ValueError: Missing file, malformed line (with its line number), or no instructions.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"instructions file {str(path)!r} is a directory; pass a file (a .txt file with one "
            "instruction per line, or .jsonl with an 'instruction' field)"
        )
    if not path.is_file():
        raise ValueError(
            f"instructions file {str(path)!r} does not exist; check the path (a .txt file with one "
            "instruction per line, or .jsonl with an 'instruction' field)"
        )
    out: list[str] = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'instruction'")
            out.append(rec["instruction"].strip())
        else:
            out.append(line.strip())
    if not out:
        raise ValueError(f"instructions file {str(path)!r} holds no instructions")
    return out
