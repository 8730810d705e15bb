"""Built-in extraction instructions: everyday user requests with a fixed held-out split.

Example:
    >>> len(load_instructions("train")), len(load_instructions("heldout"))
    (256, 96)
"""

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["load_instructions", "read_instruction_file"]


@lru_cache(maxsize=1)
def _builtin() -> dict:
    with resources.files("icon2_lens").joinpath("data/instructions.json").open(encoding="utf-8") as f:
        return json.load(f)


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
    if not path.is_file():
        raise ValueError(f"instructions file {str(path)!r} does not exist")
    out: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
