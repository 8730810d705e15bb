"""``icon2-lens run``: extract → synthesize → filter → pairs → dpo → evaluate, with a report."""

import time
from pathlib import Path

from icon2_lens.runs.config import RunConfig, recorded_config
from icon2_lens.runs.pipeline import STAGES, run_pipeline

from ._common import Result, add_allow_download, add_run_options, out_dir

__all__ = ["register", "run"]

PRESET = "configs/default.toml"
"""The configuration used when none is given and --out holds none (relative to the working directory)."""


def register(sub, parents):
    p = sub.add_parser(
        "run",
        parents=parents,
        help="extract → synthesize → filter → pairs → dpo → evaluate, with a report",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="configuration (presets in configs/); default: the recorded one when --out holds a run, "
        "else configs/default.toml",
    )
    p.add_argument(
        "--out", default="runs/default", help="run folder (resumed if it holds this configuration)"
    )
    p.add_argument("--stop-after", default=None, choices=list(STAGES), help="stop after this stage")
    add_allow_download(p)
    add_run_options(p)
    return p


def run(args) -> Result:
    out = out_dir(args.out)
    cfg = RunConfig.from_toml(args.config) if args.config else recorded_config(out, RunConfig)
    if cfg is None:
        cfg = RunConfig.from_toml(PRESET)
    t0 = time.perf_counter()
    summary = run_pipeline(
        cfg, out, progress=not args.no_progress, png=not args.no_png, stop_after=args.stop_after
    )
    timings = summary.get("timings", {})
    return Result(
        summary={
            "minutes": round((time.perf_counter() - t0) / 60, 1),
            "stage seconds": {k: round(v) for k, v in timings.items()},
            "intervals": summary.get("intervals", {}),
        },
        outputs={
            "report": str((Path(out) / "report.md").resolve()),
            "out": str(Path(out).resolve()),
        },
    )
