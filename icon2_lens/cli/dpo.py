"""``icon2-lens dpo``: train with ``trl.DPOTrainer`` on a pairs file; save an HF model directory."""

import logging
import math
from pathlib import Path

from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.dpo.curves import train_rows
from icon2_lens.dpo.settings import DPOSettings
from icon2_lens.dpo.train import train_dpo
from icon2_lens.model.load import resolve_model

from ._common import Result, add_config_option, add_model, add_run_options, out_dir

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (DPOSettings,)

log = logging.getLogger(__name__)


def register(sub, parents):
    p = sub.add_parser(
        "dpo",
        parents=parents,
        help="train with trl.DPOTrainer on a pairs file; save an HF directory",
    )
    p.add_argument(
        "--pairs",
        required=True,
        help="preference pairs, JSONL (TRL conversational or standard format)",
    )
    p.add_argument(
        "--out", required=True, help="output directory: model/, dpo_log.json, dpo_curves.html/.png"
    )
    add_model(p)
    add_arguments(p, DPOSettings)
    add_run_options(p)
    add_config_option(p, "dpo")
    return p


def run(args) -> Result:
    settings = from_args(DPOSettings, args)
    out = out_dir(args.out)
    source = resolve_model(args.model)[0]
    log.info("DPO on %s with pairs %s", source, args.pairs)
    result = train_dpo(str(source), args.pairs, out, settings=settings, png=not args.no_png)
    rows = train_rows(result.log_history)
    last = rows[-1] if rows else {}
    return Result(
        summary={
            "records": result.n_records,
            "steps": result.n_steps,
            "final reward accuracy": round(last.get("rewards/accuracies", math.nan), 4),
            "final reward margin": round(last.get("rewards/margins", math.nan), 4),
            "saturated early": result.saturated,
        },
        outputs={"model": str(Path(result.model_dir).resolve()), "out": str(Path(out).resolve())},
    )
