"""The Icon² pipeline end to end: extract → synthesize → filter → pairs → dpo → evaluate → audit → report.

Each stage writes into its own folder under the run directory and marks itself finished by
writing its summary JSON last (:mod:`icon2_lens.runs.stages`); re-running skips finished stages
and lets unfinished ones resume from what they wrote. The whole configuration
(:class:`~icon2_lens.runs.config.RunConfig`) is recorded in ``config.json``; resuming with a
different configuration raises instead of mixing results.
"""

import logging
import time
from pathlib import Path
from typing import Any

import torch

from icon2_lens._files import read_marker, write_json
from icon2_lens.model.load import load_model, model_source
from icon2_lens.pairs.gate import training_pairs_path

from .config import RunConfig, check_run_dir
from .report import write_report
from .stages import (
    stage_audit,
    stage_dpo,
    stage_evaluate,
    stage_extract,
    stage_filter,
    stage_pairs,
    stage_shortcuts,
    stage_synthesize,
    wording_overlap,
)

__all__ = ["run_pipeline", "STAGES"]

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = (
    "extract",
    "synthesize",
    "filter",
    "pairs",
    "dpo",
    "evaluate",
    "audit",
)


def run_pipeline(
    cfg: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    png: bool = True,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage and write ``report.md`` / ``report.html``; returns the summary.

    Args:
        cfg: The configuration (:meth:`RunConfig.from_toml <icon2_lens.runs.config.RunConfig.from_toml>`).
        out: The run folder.
        progress: Show progress bars.
        png: Also write PNG figures.
        stop_after: Stop after this stage (one of :data:`STAGES`).
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; use one of {', '.join(STAGES)}")
    out = Path(out)
    check_run_dir(out, cfg, record=False)  # refuse another run's folder before loading anything
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model)
    cfg.check_model(int(model.cfg.n_layers))
    check_run_dir(out, cfg)
    timings_path = out / "timings.json"
    timings: dict[str, float] = read_marker(timings_path) or {}
    summary: dict[str, Any] = {"config": cfg.to_dict()}
    upto = STAGES.index(stop_after) if stop_after else len(STAGES) - 1

    def timed(name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        res = fn(*args, **kw)
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0)
        write_json(timings, timings_path)
        return res

    with torch.no_grad():
        sets, intervals = timed(
            "extract", stage_extract, model, cfg.extract, out / "extract", progress=progress
        )
        summary["intervals"] = {k: f"{v[0]}-{v[-1]}" for k, v in intervals.items()}
        steered = {
            k: list(cfg.pairs.layers) if cfg.pairs.layers is not None else list(v)
            for k, v in intervals.items()
        }
        overlap = wording_overlap(out / "extract", steered)
        for name, hit in overlap.items():
            log.warning(
                "%s: the pairs steer layers %s where the wording check flags the direction (it "
                "follows the words of its prompts there); set pairs.layers = 'criterion' to steer "
                "the recommended interval, which avoids them when it can",
                name,
                ", ".join(map(str, hit)),
            )
        summary["wording_flagged_steered"] = overlap
        if upto >= 1:
            instructions = timed(
                "synthesize",
                stage_synthesize,
                model,
                cfg.synthesize,
                out / "synthesize",
                progress=progress,
            )
        if upto >= 2:
            kept = timed(
                "filter",
                stage_filter,
                model,
                cfg.filter,
                instructions,
                sets,
                intervals,
                out / "filter",
                progress=progress,
                png=png,
            )
        if upto >= 3:
            pairs, _ = timed(
                "pairs",
                stage_pairs,
                model,
                cfg.pairs,
                kept,
                sets,
                intervals,
                out / "pairs",
                progress=progress,
            )
            summary["shortcuts"] = stage_shortcuts(pairs, cfg.audit, out / "pairs").get("shortcuts")
    if upto >= 4:
        timed("dpo", stage_dpo, cfg.dpo, model_source(model), pairs, out / "dpo", png=png)
    if upto >= 5:
        with torch.no_grad():
            timed(
                "evaluate",
                stage_evaluate,
                model,
                str(out / "dpo" / "model"),
                cfg.evaluate,
                cfg.filter,
                cfg.pairs,
                sets,
                intervals,
                out / "evaluate",
                progress=progress,
            )
    if upto >= 6:
        with torch.no_grad():
            audit = timed(
                "audit",
                stage_audit,
                model,
                str(out / "dpo" / "model"),
                cfg.audit,
                sets,
                intervals,
                training_pairs_path(out / "pairs"),
                out / "audit",
                progress=progress,
                png=png,
            )
        summary["audit_warnings"] = audit["warnings"]
    summary["timings"] = timings
    write_report(out, png=png)
    return summary
