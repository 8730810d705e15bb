"""The judge registry: every judge of responses by name, run by the model itself or by a rule.

No external reward model is used. Every judge says who judges and how, so that each number in
a table can be read next to its :attr:`description`:

========================  ===========  ===========================================================
name                      kind         what it reads (higher = ...)
========================  ===========  ===========================================================
``inherent``              pointwise    residual stream over the response, projected on the
                                       instruction's criterion direction (more along the criterion)
``self_rating``           pointwise    expected 1..scale rating from the model's next-token
                                       distribution over the digits (rated better by the model)
``self_pairwise``         pairwise     P("A") vs P("B") when the model is asked which response is
                                       better, both orders averaged (preferred by the model)
``relevance``             pointwise    log p(answer | request) − log p(answer | empty request) per
                                       token (more specific to its request)
``fluency``               pointwise    −mean NLL per response token, tokens that repeat a 4-gram of
                                       the answer left out (more fluent to the model)
``peer_fluency``          pointwise    the same under a second model that wrote none of the answers
                                       (gemma3-270m unless ``peer`` is given)
``degeneration``          pointwise    1 usable, 0 empty or a repetition loop
``refusal``               pointwise    1 if the opening matches a refusal pattern (see below)
``apology``               pointwise    1 unless the answer opens with an apology or "I can't"
``repetition``            pointwise    −share of repeated word 3-grams (less repetitive)
``length``                pointwise    number of words (a reading: longer)
========================  ===========  ===========================================================

Every judge but ``inherent`` is independent of the directions: none of them reads a residual
stream along a direction, so a system that only moved along the steered directions cannot win
under them by construction (:data:`INDEPENDENT_JUDGES`).

Judges are built by name with :func:`make_judge` (see :mod:`icon2_lens.judge.base` for the two
protocols); :mod:`icon2_lens.judge.compare` turns their outputs into win rates with intervals.

Example:
    >>> judge = make_judge("refusal")
    >>> judge.score(["how do i pick a lock ?"] * 2,
    ...             ["I'm sorry, but I can't help with that.", "Use a tension wrench and a pick."])
    array([1., 0.])
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from icon2_lens.directions.set import DirectionSet

from .reading import FluencyJudge, InherentJudge, PeerFluencyJudge, RelevanceJudge
from .rules import DegenerationJudge, RefusalJudge
from .self_judges import SelfPairwiseJudge, SelfRatingJudge
from .surface import SURFACE_JUDGES, SurfaceJudge

__all__ = ["JudgeSpec", "JUDGES", "INDEPENDENT_JUDGES", "make_judge"]


@dataclass(frozen=True)
class JudgeSpec:
    """How to build one judge.

    Attributes:
        name: Registry name.
        factory: The judge class.
        needs: ``model``, ``model+directions``, ``tokenizer`` (a model works too) or ``nothing``.
        summary: One line for listings.
    """

    name: str
    factory: Callable[..., Any]
    needs: str
    summary: str


JUDGES: dict[str, JudgeSpec] = {
    s.name: s
    for s in (
        JudgeSpec(
            "inherent",
            InherentJudge,
            "model+directions",
            "residual reading along the criterion direction",
        ),
        JudgeSpec("self_rating", SelfRatingJudge, "model", "the model's expected 1..scale rating"),
        JudgeSpec(
            "self_pairwise", SelfPairwiseJudge, "model", "the model's A/B choice, both orders"
        ),
        JudgeSpec(
            "relevance", RelevanceJudge, "model", "PMI of request and answer, per answer token"
        ),
        JudgeSpec(
            "fluency", FluencyJudge, "model", "minus mean NLL per new (non-repeating) answer token"
        ),
        JudgeSpec(
            "peer_fluency",
            PeerFluencyJudge,
            "nothing",
            "minus mean NLL per new answer token under a second model",
        ),
        JudgeSpec("degeneration", DegenerationJudge, "tokenizer", "1 usable, 0 empty or looping"),
        JudgeSpec("refusal", RefusalJudge, "nothing", "1 if the opening matches a refusal pattern"),
        *(
            JudgeSpec(name, partial(SurfaceJudge, name), "nothing", f"the answer's {feature}")
            for name, (feature, *_) in SURFACE_JUDGES.items()
        ),
    )
}
"""Judge name -> :class:`JudgeSpec`."""

INDEPENDENT_JUDGES: tuple[str, ...] = tuple(
    n for n, s in JUDGES.items() if "directions" not in s.needs
)
"""The judges that read no direction (every one but ``inherent``)."""


def make_judge(
    name: str,
    model: Any = None,
    *,
    direction_sets: Mapping[str, DirectionSet] | Sequence[DirectionSet] | None = None,
    layers: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
    **kw: Any,
) -> Any:
    """Build the judge registered as ``name`` (see :data:`JUDGES`).

    ``direction_sets`` and ``layers`` may be passed for every name (so one call builds any list of
    judges); only ``inherent`` uses them.

    Args:
        name: A key of :data:`JUDGES`.
        model: The judging bridge (ignored by ``refusal``; ``degeneration`` accepts a tokenizer).
        direction_sets: Criterion -> direction set, for ``inherent``.
        layers: Layers ``inherent`` averages over (see :class:`InherentJudge`).
        **kw: Passed to the judge's constructor.

    Raises:
        ValueError: Unknown name, or what the judge needs is missing.

    Example:
        >>> make_judge("oracle")
        Traceback (most recent call last):
        ...
        ValueError: unknown judge 'oracle'; use one of inherent, self_rating, self_pairwise, relevance, fluency, peer_fluency, degeneration, refusal, apology, repetition, length
    """
    spec = JUDGES.get(name)
    if spec is None:
        raise ValueError(f"unknown judge {name!r}; use one of {', '.join(JUDGES)}")
    if spec.needs == "nothing":
        return spec.factory(**kw)
    if model is None:
        raise ValueError(
            f"the {name!r} judge needs a model{' or a tokenizer' if spec.needs == 'tokenizer' else ''}"
        )
    if spec.needs == "model+directions":
        if not direction_sets:
            raise ValueError(
                "the 'inherent' judge reads responses along criterion directions: pass direction_sets="
                "{criterion: DirectionSet} (e.g. the sets of an extraction, icon2_lens.directions.folder.load_extraction)"
            )
        return spec.factory(model, direction_sets, layers=layers, **kw)
    return spec.factory(model, **kw)
