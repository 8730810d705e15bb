"""Command line: ``icon2-lens extract ...``.

Run ``icon2-lens extract --help`` for the options. The command prints a summary table and writes
per-criterion direction sets, ``diagnostics.json`` and figures into ``--out``.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .directions import METHODS

    parser = argparse.ArgumentParser(prog="icon2-lens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="fetch and cache the embedded model (one time)")
    prep.add_argument("--model", default=None, help="embedded model key (default smollm2-135m)")

    ex = sub.add_parser(
        "extract",
        help="extract per-layer preference directions and diagnostics",
        description="Contrastive system prompts per criterion → last-token residuals at every "
        "layer → one unit direction per layer, diagnosed on held-out instructions.",
    )
    ex.add_argument("--model", default=None,
                    help="embedded model key (smollm2-135m [default], gemma3-270m), HF model directory or hub id")
    ex.add_argument("--criteria", default="general,helpfulness,honesty,harmlessness",
                    help="comma-separated built-in criteria (default: all four)")
    ex.add_argument("--criteria-file", default=None,
                    help="TOML/JSON file of user-defined criteria (name, positive, negative, description); "
                         "replaces --criteria")
    ex.add_argument("--instructions", default=None,
                    help="training instructions (.txt, one per line, or .jsonl with 'instruction'); "
                         "default: the built-in train split")
    ex.add_argument("--heldout", default=None, help="held-out instructions file (default: built-in held-out split)")
    ex.add_argument("--n-instructions", type=int, default=256, help="training instructions used (default 256)")
    ex.add_argument("--n-heldout", type=int, default=96, help="held-out instructions used (default 96)")
    ex.add_argument("--layers", default="all", help="'all', ranges and indices such as '10-19' or '3,5,-1'")
    ex.add_argument("--site", default="resid_post", choices=["resid_pre", "resid_mid", "resid_post"])
    ex.add_argument("--method", default="pca_symmetric", choices=list(METHODS),
                    help="pca: centred PCA (Icon²'s literal PCA); pca_symmetric: uncentred SVD of "
                         "[Δ;−Δ] (default); mean_diff: normalised mean contrast")
    ex.add_argument("--no-center", action="store_true", help="uncentred PCA for --method pca")
    ex.add_argument("--batch-size", type=int, default=16)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", default="runs/extract", help="output directory (default runs/extract)")
    ex.add_argument("--no-figures", action="store_true", help="skip all figures")
    ex.add_argument("--no-png", action="store_true", help="write HTML figures only")
    ex.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _extract(args: argparse.Namespace) -> int:
    import torch

    from .criteria import get_criteria, load_criteria_file
    from .extract import ExtractConfig, run_extraction
    from .hooks import parse_layers
    from .instructions import read_instruction_file
    from .models import load_model

    if args.criteria_file:
        criteria = load_criteria_file(args.criteria_file)
    else:
        criteria = get_criteria([c.strip() for c in args.criteria.split(",") if c.strip()])
    train = read_instruction_file(args.instructions) if args.instructions else None
    heldout = read_instruction_file(args.heldout) if args.heldout else None
    t0 = time.perf_counter()
    model = load_model(args.model)
    torch.set_grad_enabled(False)
    layers = parse_layers(args.layers, model.cfg.n_layers)
    config = ExtractConfig(method=args.method, center=not args.no_center, site=args.site,
                           layers=tuple(layers), n_instructions=args.n_instructions,
                           n_heldout=args.n_heldout, batch_size=args.batch_size, seed=args.seed)
    result = run_extraction(model, criteria, config=config, out=args.out, train=train, heldout=heldout,
                            figures=not args.no_figures, png=not args.no_png,
                            progress=not args.no_progress)
    summary = result.summary()
    cols = ["criterion", "best_layer", "best_layer_single_acc", "interval", "interval_paired_acc",
            "interval_min_paired_acc", "interval_single_acc"]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nmodel {model.cfg.model_name} | method {config.method} | site {config.site} | "
          f"{time.perf_counter() - t0:.0f} s | outputs in {Path(args.out).resolve()}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .models import DEFAULT_MODEL, embedded_model_dir

    path = embedded_model_dir(args.model or DEFAULT_MODEL)
    print(f"{args.model or DEFAULT_MODEL}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "choreographer", "kaleido", "transformers", "transformer_lens"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "extract":
            return _extract(args)
        if args.command == "prepare":
            return _prepare(args)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"icon2-lens {args.command}: error: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
