"""AlignEZ settings, prompts and file names (see :mod:`icon2_lens.alignez` for the method)."""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from icon2_lens._config import documented, option

__all__ = [
    "AlignEZConfig",
    "DESCRIBE_HELP",
    "DESCRIBE_HARM",
    "RESPOND_SYSTEM",
    "PROMPTS_VERSION",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CFG_FILE",
    "PAIRS_FILE",
    "PAIRS_SETTINGS",
    "SITE",
    "SIGN_CONVENTION",
    "HARM_RULES",
    "HARM_FILTERS",
    "LAYER_RULES",
    "SIMILARITIES",
    "check_choice",
    "check_finite",
]


FORMAT = "icon2_lens.alignez"
FORMAT_VERSION = 1
WEIGHTS_FILE = "alignez.safetensors"
CFG_FILE = "alignez.json"
PAIRS_FILE = "pairs.jsonl"
PAIRS_SETTINGS = "pairs_settings.json"
SITE = "resid_post"
SIGN_CONVENTION = "help: mean((h_help - h_harm) . theta) > 0; harm: the harm side of each axis"

#: Asks for one sentence on what a good answer to ``{query}`` would do.
DESCRIBE_HELP = (
    "Here is a request someone sent to an assistant:\n\n{query}\n\n"
    "In one short sentence, say what a good answer to this request would do. "
    "Reply with that sentence only."
)
#: Asks for one sentence on what a bad answer to ``{query}`` would do.
DESCRIBE_HARM = (
    "Here is a request someone sent to an assistant:\n\n{query}\n\n"
    "In one short sentence, say what a bad answer to this request would do: one that is "
    "unhelpful, careless or harmful. Reply with that sentence only."
)
#: System prompt for an answer that follows a ``{description}``; the user turn is the query.
RESPOND_SYSTEM = "You are an assistant. Write your answer so that it does this: {description}"

PROMPTS_VERSION = hashlib.sha256(
    "\0".join((DESCRIBE_HELP, DESCRIBE_HARM, RESPOND_SYSTEM)).encode()
).hexdigest()[:12]

HARM_RULES = ("mirror", "subspace")
HARM_FILTERS = ("always", "expressed")
LAYER_RULES = ("difference", "separation")
SIMILARITIES = ("centered", "raw")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


def check_finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


@documented
@dataclass(frozen=True, kw_only=True)
class AlignEZConfig:
    """How an AlignEZ edit is fitted and applied (see :mod:`icon2_lens.alignez`); saved with the edit."""

    k: int = option(2, help="directions per layer (help and harm each)")
    n_edit_layers: int = option(
        3, aliases=("--n-layers",), help="how many layers to edit when layers is not given"
    )
    layers: tuple[int, ...] | None = option(
        None,
        layers="auto",
        help="explicit layers to edit (negatives count from the end); auto: chosen",
    )
    candidate_layers: tuple[int, ...] | None = option(
        None, layers="auto", help="layers the choice draws from; auto: the middle half"
    )
    layer_rule: Literal["difference", "separation"] = option(
        "difference",
        help="how layers are chosen: help/harm difference relative to the residual norm, or "
        "held-out separation of the top help direction",
    )
    harm: Literal["mirror", "subspace"] = option(
        "mirror",
        help="harm directions: the help axes pointing the other way, or the harm answers' own subspace",
    )
    harm_filter: Literal["always", "expressed"] = option(
        "always",
        help="harm directions a query keeps: all of them (the ReLU gate tests presence), or those it leans to",
    )
    center: bool = option(
        True,
        help="measure gates and filter from the fitted centres (off: the literal <x, θ> and cos(Φ, θ))",
    )
    unit: Literal["relative", "absolute"] = option(
        "relative", help="relative: scales × the layer's answer-embedding norm; absolute: as given"
    )
    gate_scale: float = option(0.05, help="gate temperature τ (in unit)")
    edit_scale: float | None = option(None, help="push r (in unit); none: equal to gate_scale")
    positions: Literal["all", "generated"] = option(
        "all", help="edited positions: all, or generated only"
    )
    strength: float = option(1.0, help="default strength s (0: no edit; negative reverses it)")
    description_tokens: int = option(40, help="budget of each good/bad description")
    response_tokens: int = option(80, help="budget of each conditioned answer")
    max_similarity: float = option(0.99, help="drop pairs whose embedding cosine is above this")
    similarity: Literal["centered", "raw"] = option(
        "centered", help="pair similarity: centred or raw cosine"
    )
    max_repetition: float = option(
        0.5, help="repeated-4-gram rate above which a text counts as degenerate"
    )
    do_sample: bool = option(
        False,
        aliases=("--sample",),
        help="sample the descriptions and answers (each text from its own seeded generator)",
    )
    temperature: float = option(1.0, help="sampling temperature")
    batch_size: int = option(16, help="rows per forward pass")
    seed: int = option(0, help="sampling seed")

    def __post_init__(self) -> None:
        for name in ("k", "n_edit_layers", "description_tokens", "response_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("layers", "candidate_layers"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(int(x) for x in value)
                if not value:
                    raise ValueError(f"{name} is empty; pass at least one layer or None")
                object.__setattr__(self, name, value)
        check_choice("layer_rule", self.layer_rule, LAYER_RULES)
        check_choice("harm", self.harm, HARM_RULES)
        check_choice("harm_filter", self.harm_filter, HARM_FILTERS)
        check_choice("unit", self.unit, ("relative", "absolute"))
        check_choice("positions", self.positions, ("all", "generated"))
        check_choice("similarity", self.similarity, SIMILARITIES)
        check_finite("gate_scale", self.gate_scale, positive=True)
        if self.edit_scale is not None:
            check_finite("edit_scale", self.edit_scale, positive=True)
        check_finite("strength", self.strength)
        check_finite("temperature", self.temperature, positive=True)
        if not -1.0 <= check_finite("max_similarity", self.max_similarity) <= 1.0:
            raise ValueError(f"max_similarity must be in [-1, 1], got {self.max_similarity}")
        if not 0.0 < check_finite("max_repetition", self.max_repetition) <= 1.0:
            raise ValueError(f"max_repetition must be in (0, 1], got {self.max_repetition}")

    def settings(self) -> dict[str, Any]:
        """Every field as JSON-ready values (tuples become lists)."""
        out = asdict(self)
        for name in ("layers", "candidate_layers"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "AlignEZConfig":
        """The config back from :meth:`settings` (unknown keys raise)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown AlignEZ settings {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def _pair_settings(self) -> dict[str, Any]:
        """The settings that change the self-generated pairs (resume refuses others)."""
        return {
            "description_tokens": self.description_tokens,
            "response_tokens": self.response_tokens,
            "max_repetition": self.max_repetition,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "seed": self.seed,
            "prompts_version": PROMPTS_VERSION,
        }
