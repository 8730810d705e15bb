"""``icon2-lens experiment``: Icon² against baseline pair sources and AlignEZ, with results and cost tables."""

import time
from pathlib import Path

from icon2_lens.runs.config import ExperimentConfig, recorded_config
from icon2_lens.runs.experiment import run_experiment

from ._common import Result, add_allow_download, add_run_options, out_dir

__all__ = ["register", "run"]

PRESET = "configs/experiment-small.toml"
"""The configuration used when none is given and --out holds none (relative to the working directory)."""


def register(sub, parents):
    p = sub.add_parser(
        "experiment",
        parents=parents,
        help="Icon² vs baseline pair sources and AlignEZ: DPO per source, judged on held-out "
        "instructions; results and cost tables",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="configuration (presets in configs/); default: the recorded one when --out holds a experiment, "
        "else configs/experiment-small.toml",
    )
    p.add_argument(
        "--out",
        default="runs/experiment",
        help="experiment folder (resumed if it holds this configuration)",
    )
    add_allow_download(p)
    add_run_options(p)
    return p


def run(args) -> Result:
    out = out_dir(args.out)
    cfg = (
        ExperimentConfig.from_toml(args.config)
        if args.config
        else recorded_config(out, ExperimentConfig)
    )
    if cfg is None:
        cfg = ExperimentConfig.from_toml(PRESET)
    t0 = time.perf_counter()
    result = run_experiment(cfg, out, progress=not args.no_progress, png=not args.no_png)
    return Result(
        summary={"minutes": round((time.perf_counter() - t0) / 60, 1), "instructions": result["n"]},
        outputs={
            "report": str((Path(out) / "report.md").resolve()),
            "out": str(Path(out).resolve()),
        },
    )
