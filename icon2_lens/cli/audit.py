"""``icon2-lens audit``: what the directions (and the pairs, and the trained model) really carry."""

import json
from pathlib import Path

from icon2_lens.audit.config import AuditConfig
from icon2_lens.audit.run import run_audit
from icon2_lens.cli.args import add_arguments, from_args
from icon2_lens.directions.folder import load_extraction

from ._common import (
    Result,
    add_config_option,
    add_directions,
    add_model,
    add_run_options,
    load,
    out_dir,
)

__all__ = ["register", "run", "CONFIG_CLASSES"]

CONFIG_CLASSES = (AuditConfig,)


def register(sub, parents):
    p = sub.add_parser(
        "audit",
        parents=parents,
        help="audit directions: promoted tokens, stereotypes, wording, confounds, pair shortcuts, DPO shift",
    )
    add_model(p)
    add_directions(p)
    p.add_argument("--pairs", default=None, help="a pairs.jsonl to check for surface shortcuts")
    p.add_argument(
        "--trained",
        default=None,
        help="a trained model directory (e.g. <run>/dpo/model): its stereotype score and what DPO moved",
    )
    add_arguments(p, AuditConfig)
    p.add_argument(
        "--out", default="runs/audit", help="output directory (resumed if it holds this audit)"
    )
    add_run_options(p)
    add_config_option(p, "audit")
    return p


def run(args) -> Result:
    config = from_args(AuditConfig, args)
    out = out_dir(args.out)
    if args.pairs is not None and not Path(args.pairs).is_file():
        raise ValueError(
            f"{args.pairs} does not exist; pass the pairs.jsonl written by 'icon2-lens pairs'"
        )
    model = load(args.model)
    sets, intervals = load_extraction(args.directions, model=model)
    trained = load(args.trained) if args.trained else None
    res = run_audit(
        model,
        sets,
        config=config,
        pairs=args.pairs,
        trained=trained,
        intervals=intervals,
        out=out,
        png=not args.no_png,
        progress=not args.no_progress,
    )
    head = res["headline"]
    summary = {"sections": ", ".join(res["sections"]), "warnings": len(res["warnings"])}
    if "shortcuts" in head:
        summary["shortcut_auc"] = round(head["shortcuts"]["bag_of_words_auc"], 3)
    text = (
        json.dumps(head, indent=2, ensure_ascii=False)
        + "\n"
        + "\n".join(f"warning: {w}" for w in res["warnings"])
    )
    return Result(
        text,
        summary,
        {
            "audit": str((Path(out) / "audit.json").resolve()),
            "report": str((Path(out) / "report.md").resolve()),
        },
    )
