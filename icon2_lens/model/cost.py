"""What a stage costs: wall-clock seconds and the tokens pushed through the model.

The library's forward loops (generation, residual reading, judging) report the tokens they feed
the model to :func:`count_forward`; a :class:`CostMeter` collects them per named stage, together
with the wall-clock time of the stage. Outside a metered stage counting is a no-op, so the
library pays nothing when no one is measuring.

``forward_tokens`` counts every non-padding position a forward pass computes: a prompt's tokens
once (the KV cache then holds them) and one position per generated token. It is the
hardware-independent half of a cost table; seconds are the other half.

Example:
    >>> meter = CostMeter()
    >>> with meter.stage("pairs"):
    ...     count_forward(120, generated=20)
    ...     count_forward(30)
    >>> meter["pairs"].forward_tokens, meter["pairs"].generated_tokens, meter["pairs"].passes
    (150, 20, 2)
    >>> count_forward(5)  # outside any stage: ignored
    >>> meter["pairs"].forward_tokens
    150
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StageCost", "CostMeter", "count_forward"]


@dataclass
class StageCost:
    """Accumulated cost of one named stage (a stage entered twice adds up).

    Attributes:
        name: The stage.
        seconds: Wall-clock time spent inside it.
        forward_tokens: Non-padding positions computed by forward passes.
        generated_tokens: Tokens sampled or picked by generation (included in ``forward_tokens``).
        passes: Forward passes.
    """

    name: str
    seconds: float = 0.0
    forward_tokens: int = 0
    generated_tokens: int = 0
    passes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ACTIVE: list[StageCost] = []


def count_forward(tokens: int, *, generated: int = 0) -> None:
    """Report one forward pass over ``tokens`` positions to the innermost metered stage, if any."""
    if _ACTIVE:
        cost = _ACTIVE[-1]
        cost.forward_tokens += int(tokens)
        cost.generated_tokens += int(generated)
        cost.passes += 1


class CostMeter:
    """Wall clock and forward tokens per named stage.

    Stages may nest; tokens go to the innermost one, seconds to each (so an outer stage's time
    includes its inner stages, its tokens do not).
    """

    def __init__(self) -> None:
        self.stages: dict[str, StageCost] = {}

    def __getitem__(self, name: str) -> StageCost:
        return self.stages[name]

    def __contains__(self, name: str) -> bool:
        return name in self.stages

    @contextmanager
    def stage(self, name: str) -> Iterator[StageCost]:
        """Meter the block as stage ``name`` (accumulating if it was metered before)."""
        cost = self.stages.setdefault(name, StageCost(name))
        _ACTIVE.append(cost)
        t0 = time.perf_counter()
        try:
            yield cost
        finally:
            cost.seconds += time.perf_counter() - t0
            _ACTIVE.remove(cost)

    def add(self, cost: StageCost | dict[str, Any]) -> None:
        """Add a stage measured elsewhere (e.g. read back from a finished run's JSON)."""
        c = cost if isinstance(cost, StageCost) else StageCost(**cost)
        have = self.stages.setdefault(c.name, StageCost(c.name))
        have.seconds += c.seconds
        have.forward_tokens += c.forward_tokens
        have.generated_tokens += c.generated_tokens
        have.passes += c.passes

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_dict() for k, v in self.stages.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> "CostMeter":
        meter = cls()
        for value in data.values():
            meter.add(value)
        return meter
