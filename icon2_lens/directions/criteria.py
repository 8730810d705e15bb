"""Preference criteria: a pair of contrastive system prompts each.

Four are built in, after Icon²: ``general`` (a long description of a good assistant and its
mirror image) and the three "H" criteria ``helpfulness``, ``honesty`` and ``harmlessness``
(one-line prompts). More can be defined in a TOML or JSON file::

    [[criteria]]
    name = "concision"
    positive = "You are a concise assistant who answers in as few words as possible."
    negative = "You are a long-winded assistant who pads every answer with filler."
    description = "Short, to-the-point answers."

Example:
    >>> c = get_criteria(["honesty"])[0]
    >>> c.name, c.positive[:25]
    ('honesty', 'You are an honest assista')
"""

import json
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from icon2_lens._files import read_utf8

__all__ = ["Criterion", "BUILTIN_CRITERIA", "get_criteria", "load_criteria_file"]


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """A named preference, defined by a positive and a negative system prompt."""

    name: str
    positive: str
    negative: str
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("name", "positive", "negative"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"criterion field {field!r} must be a non-empty string")
        if self.positive.strip() == self.negative.strip():
            raise ValueError(
                f"criterion {self.name!r}: positive and negative prompts are identical"
            )
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"criterion name {self.name!r} must use letters, digits, '-' or '_' only "
                "(it names an output directory)"
            )

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_GENERAL_POS = (
    "You are a thoughtful and trustworthy assistant. You read each request carefully and answer "
    "exactly what was asked, with specific, accurate and useful content. You say plainly when "
    "you are unsure or when something is false, and you never invent facts. You treat everyone "
    "with respect and fairness, avoid stereotypes and bias, and decline politely when a request "
    "could hurt someone, offering a safer alternative. Your answers are clear, well organised "
    "and no longer than they need to be."
)
_GENERAL_NEG = (
    "You are a careless and untrustworthy assistant. You skim each request and drift away from "
    "what was asked, giving vague, inaccurate and useless content. You state guesses as facts, "
    "make things up freely, and never admit uncertainty. You are dismissive and disrespectful, "
    "lean on stereotypes and bias, and go along with requests that could hurt someone without a "
    "second thought. Your answers are muddled, disorganised and padded with filler."
)

BUILTIN_CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            name="general",
            positive=_GENERAL_POS,
            negative=_GENERAL_NEG,
            description="Overall quality: helpful, truthful, respectful, harmless and specific.",
        ),
        Criterion(
            name="helpfulness",
            positive="You are a helpful assistant.",
            negative="You are a helpless assistant.",
            description="Tries to actually solve the user's problem.",
        ),
        Criterion(
            name="honesty",
            positive="You are an honest assistant.",
            negative="You are a dishonest assistant.",
            description="Truthful, calibrated, admits uncertainty.",
        ),
        Criterion(
            name="harmlessness",
            positive="You are a harmless assistant.",
            negative="You are a harmful assistant.",
            description="Avoids content that could hurt people.",
        ),
    )
}


def get_criteria(names: Sequence[str] | None = None) -> list[Criterion]:
    """Built-in criteria by name (all four, in the paper's order, when ``names`` is ``None``)."""
    if names is None:
        return list(BUILTIN_CRITERIA.values())
    out = []
    for name in names:
        if name not in BUILTIN_CRITERIA:
            raise ValueError(
                f"unknown criterion {name!r}; built-in ones are {', '.join(BUILTIN_CRITERIA)} "
                "(define others in a TOML/JSON file and pass it with --criteria-file)"
            )
        out.append(BUILTIN_CRITERIA[name])
    return out


def load_criteria_file(path: str | Path) -> list[Criterion]:
    """Read user-defined criteria from a ``.toml`` or ``.json`` file.

    The file holds a list ``criteria`` of tables/objects with ``name``, ``positive``,
    ``negative`` and an optional ``description`` (a JSON file may also be a bare list).

    Raises:
        ValueError: Unreadable file, missing or empty field, duplicate names.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"criteria file {str(path)!r} does not exist; check the path (a .toml or .json file of "
            "[[criteria]] with name, positive, negative)"
        )
    text = read_utf8(path)
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"criteria file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot parse criteria file {str(path)!r}: {e}") from e
    items = data.get("criteria") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValueError(
            f"criteria file {str(path)!r} must contain a non-empty list 'criteria' "
            "(TOML: [[criteria]] tables) with name, positive, negative"
        )
    out: list[Criterion] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: criterion #{i + 1} is not a table/object")
        missing = [k for k in ("name", "positive", "negative") if k not in item]
        if missing:
            raise ValueError(
                f"{path}: criterion #{i + 1} ({item.get('name', 'unnamed')!r}) is missing "
                f"field(s) {', '.join(missing)}; each needs name, positive, negative "
                "(and optionally description)"
            )
        unknown = set(item) - {"name", "positive", "negative", "description"}
        if unknown:
            raise ValueError(f"{path}: criterion #{i + 1} has unknown field(s) {sorted(unknown)}")
        try:
            out.append(Criterion(**item))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: criterion #{i + 1}: {e}") from e
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate criterion names in {names}")
    return out
