"""How pairs read under the unsteered model: does the chosen answer score above the rejected one?

Example:
    >>> pair_margins(None, [], {})
    {'n': 0}
"""

import logging
from collections.abc import Mapping
from typing import Any

from icon2_lens._types import LensModel
from icon2_lens.directions.set import DirectionSet
from icon2_lens.judge.reading import score_responses

__all__ = ["pair_margins"]

log = logging.getLogger(__name__)


def pair_margins(
    model: LensModel | None,
    records: list[dict[str, Any]],
    sets: Mapping[str, DirectionSet],
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """How often the chosen response scores above the rejected one along its direction (unsteered judge)."""
    if not records:
        return {"n": 0}
    ins = [r["prompt"][0]["content"] for r in records]
    ds = [sets[r["icon2_criterion"]] for r in records]
    layers = [r["icon2_layers"] for r in records]
    a = score_responses(
        model,
        ins,
        [r["chosen"][0]["content"] for r in records],
        ds,
        layers=layers,
        progress=progress,
    )
    b = score_responses(
        model,
        ins,
        [r["rejected"][0]["content"] for r in records],
        ds,
        layers=layers,
        progress=progress,
    )
    gap = a["projection"] - b["projection"]
    above = float((gap > 0).float().mean())
    if above < 0.5:
        log.warning(
            "ONLY %.0f%% OF THE PAIRS READ CHOSEN ABOVE REJECTED along their own direction: the "
            "pairs may be inverted (check the signs of γ⁺ and γ⁻ and the direction sets) and DPO "
            "would learn the opposite of the criterion",
            100 * above,
        )
    return {
        "n": len(records),
        "chosen_above_rejected": above,
        "mean_gap": float(gap.mean()),
        "chosen_nll": float(a["nll"].nanmean()),
        "rejected_nll": float(b["nll"].nanmean()),
        "chosen_tokens": float(a["n_tokens"].mean()),
        "rejected_tokens": float(b["n_tokens"].mean()),
        "judge": "unsteered model: projection of the response's residual stream (mean over its tokens) on the "
        "criterion's direction, averaged over the steered layers",
    }
