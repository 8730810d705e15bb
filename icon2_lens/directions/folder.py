"""The extraction folder: one sub-folder per criterion, written as each finishes, read back by every stage.

Layout of an ``icon2-lens extract`` folder::

    <criterion>/directions.safetensors  <criterion>/cfg.json      (the DirectionSet)
    <criterion>/diagnostics.json        (per-layer diagnostics and the interval; written last: finished)
    diagnostics.json                    (all criteria, their cosines, the config)
    figures/                            (layer selection, scatter, projections, cosines; HTML + PNG)
"""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from icon2_lens._files import read_json, write_json
from icon2_lens.figures import write_figures_or_warn

from .diagnostics import layer_cosines
from .plots import (
    plot_criterion_cosines,
    plot_layer_cosines,
    plot_layer_selection,
    plot_projection_hist,
    plot_scatter,
    plot_summary,
)
from .results import CriterionResult, ExtractionResult
from .set import DirectionSet, load_direction_set

__all__ = [
    "DIAGNOSTICS_FILE",
    "is_finished",
    "write_criterion",
    "read_criterion",
    "write_outputs",
    "load_extraction",
]

DIAGNOSTICS_FILE = "diagnostics.json"


def is_finished(folder: Path) -> bool:
    """Whether a criterion's folder holds a finished extraction (its diagnostics are written last)."""
    return (Path(folder) / DIAGNOSTICS_FILE).is_file()


def read_criterion(ds: DirectionSet, folder: Path) -> CriterionResult:
    """A finished criterion read back (without its activations)."""
    diag = read_json(Path(folder) / DIAGNOSTICS_FILE)
    wording = pd.DataFrame(diag["wording"]) if diag.get("wording") else None
    return CriterionResult(
        ds, pd.DataFrame(diag["layers"]), tuple(diag["interval"]), wording=wording
    )


def write_criterion(res: CriterionResult, done: Path, *, figures: bool, png: bool) -> None:
    """Write one criterion's directions, figures and diagnostics (last: the criterion is finished)."""
    res.directions.save(done)
    if figures:
        acts = res.activations
        lo, hi = res.interval
        layer = res.summary()["best_layer"]
        figs = {
            f"{res.directions.criterion}_layer_selection": plot_layer_selection(
                res.table, res.interval
            )
        }
        if acts is not None:
            mid = (lo + hi) // 2
            figs[f"{res.directions.criterion}_scatter_layer{mid}"] = plot_scatter(res, layer=mid)
            figs[f"{res.directions.criterion}_projections_layer{layer}"] = plot_projection_hist(
                res, layer=layer
            )
        write_figures_or_warn(figs, done.parent / "figures", png=png)
    # Written last: its presence marks the criterion as finished.
    cos = layer_cosines(res.directions)
    write_json(
        {
            "interval": list(res.interval),
            "summary": res.summary(),
            "layers": res.table.to_dict(orient="records"),
            "layer_cosines": {
                "layers": list(res.directions.layers),
                "matrix": cos.values.round(6).tolist(),
            },
            **(
                {"wording": res.wording.to_dict(orient="records")}
                if res.wording is not None
                else {}
            ),
        },
        done / DIAGNOSTICS_FILE,
    )


def write_outputs(
    result: ExtractionResult, out_dir: Path, *, figures: bool = True, png: bool = True
) -> None:
    """Write the cross-criterion files: ``diagnostics.json`` and the cosine heatmaps."""
    cos = result.criterion_cosines()
    write_json(
        {
            "config": asdict(result.config) if result.config else None,
            "summary": result.summary().to_dict(orient="records"),
            "layers": result.table().to_dict(orient="records"),
            "criterion_cosines": cos.to_dict(orient="records"),
            "interval_rule": "width round(n_layers/3), layers 1..n-2, max mean heldout_single_acc, "
            "ties (within 0.005) to the window closest to the middle",
        },
        out_dir / DIAGNOSTICS_FILE,
    )
    if figures:
        figs = {"layer_selection_all": plot_summary(result)}
        figs["criterion_cosines"] = plot_criterion_cosines(cos)
        for name, res in result.results.items():
            figs[f"{name}_layer_cosines"] = plot_layer_cosines(res.directions)
        write_figures_or_warn(figs, out_dir / "figures", png=png)


def load_extraction(
    path: str | Path, *, model: Any = None, criteria: list[str] | None = None
) -> tuple[dict[str, DirectionSet], dict[str, list[int]]]:
    """Direction sets and recommended control intervals from an ``icon2-lens extract`` directory.

    Args:
        path: The extraction output directory (one sub-directory per criterion).
        model: If given, every set is checked against it (width, layers, weight fingerprint).
        criteria: Criteria to load (default: every finished one).

    Returns:
        ``(sets, intervals)``: criterion -> :class:`DirectionSet`, criterion -> interval layers.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a directory; pass the output directory of 'icon2-lens extract'"
        )
    found = sorted(p.parent.name for p in root.glob(f"*/{DIAGNOSTICS_FILE}"))
    names = list(criteria) if criteria else found
    missing = [c for c in names if c not in found]
    if missing or not names:
        raise ValueError(
            f"{root} holds no finished extraction for {missing or 'any criterion'} "
            f"(found: {found or 'none'}); run 'icon2-lens extract --out {root}' first"
        )
    sets, intervals = {}, {}
    for name in names:
        sets[name] = load_direction_set(root / name, model=model)
        intervals[name] = _interval(root / name / DIAGNOSTICS_FILE)
    return sets, intervals


def _interval(path: Path) -> list[int]:
    """The recommended interval recorded in a criterion's diagnostics file, checked."""
    diag = read_json(path)
    interval = diag.get("interval") if isinstance(diag, dict) else None
    if (
        not isinstance(interval, list)
        or len(interval) != 2
        or not all(isinstance(x, int) for x in interval)
        or interval[0] > interval[1]
    ):
        raise ValueError(
            f"{path} records no valid 'interval' [first, last] layer; the file is damaged: "
            "extract the directions again"
        )
    return list(range(interval[0], interval[1] + 1))
