"""What an extraction produces: activations, directions, per-layer diagnostics, the recommended interval."""

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from icon2_lens._types import LayerActs

from .diagnostics import criterion_cosines
from .set import DirectionSet

__all__ = ["ContrastActivations", "CriterionResult", "ExtractionResult"]


@dataclass(frozen=True)
class ContrastActivations:
    """Last-token activations ``[n, layer, d_model]`` under the positive and negative prompt."""

    pos: LayerActs
    neg: LayerActs
    pos_heldout: Float[Tensor, "m layer d_model"]
    neg_heldout: Float[Tensor, "m layer d_model"]


@dataclass
class CriterionResult:
    """Directions, per-layer diagnostics and recommended interval for one criterion."""

    directions: DirectionSet
    table: pd.DataFrame
    interval: tuple[int, int]
    activations: ContrastActivations | None = None  # None when loaded back from disk
    wording: pd.DataFrame | None = None  # per wording and layer, when the wording check ran

    def summary(self) -> dict[str, Any]:
        t = self.table
        best = t.sort_values(["heldout_single_acc", "separation"], ascending=False).iloc[0]
        lo, hi = self.interval
        inside = t[(t["layer"] >= lo) & (t["layer"] <= hi)]
        return {
            "criterion": self.directions.criterion,
            "best_layer": int(best["layer"]),
            "best_layer_single_acc": float(best["heldout_single_acc"]),
            "interval": f"{lo}-{hi}",
            "interval_paired_acc": float(inside["heldout_paired_acc"].mean()),
            "interval_min_paired_acc": float(inside["heldout_paired_acc"].min()),
            "interval_single_acc": float(inside["heldout_single_acc"].mean()),
            **self._wording_summary(inside),
        }

    def _wording_summary(self, inside: pd.DataFrame) -> dict[str, Any]:
        if "wording_flag" not in self.table:
            return {}
        flagged = self.table.loc[self.table["wording_flag"].astype(bool), "layer"]
        return {
            "wording_flagged_layers": [int(x) for x in flagged],
            "interval_wording_min_acc": float(inside["wording_min_acc"].min()),
        }


@dataclass
class ExtractionResult:
    """Everything :func:`run_extraction` produced, keyed by criterion name."""

    results: dict[str, CriterionResult] = field(default_factory=dict)
    config: Any = None  # the ExtractConfig

    @property
    def sets(self) -> list[DirectionSet]:
        return [r.directions for r in self.results.values()]

    def table(self) -> pd.DataFrame:
        """All criteria's per-layer diagnostics in one long table."""
        return pd.concat([r.table for r in self.results.values()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """One row per criterion: best layer, recommended interval and its held-out accuracy."""
        return pd.DataFrame([r.summary() for r in self.results.values()])

    def criterion_cosines(self) -> pd.DataFrame:
        return criterion_cosines(self.sets)
