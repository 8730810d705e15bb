"""Command line: ``icon2-lens {prepare,extract,synthesize,filter,pairs,sweep,dpo,run,experiment,eval,alignez} ...``.

Run ``icon2-lens <command> --help`` for the options. Every command writes its results into
``--out`` as it goes and resumes from there when re-run with the same settings.
"""

import argparse
import json
import logging
import random
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
    ex.add_argument("--backend", default="fast", choices=["fast", "bridge"],
                    help="fast: SDPA twin sharing the bridge's weights, each system prompt computed once "
                         "(default); bridge: the bridge's hook points. Equal up to float rounding")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--out", default="runs/extract", help="output directory (default runs/extract)")
    ex.add_argument("--no-figures", action="store_true", help="skip all figures")
    ex.add_argument("--no-png", action="store_true", help="write HTML figures only")
    ex.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_pipeline_commands(sub)
    return parser


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        p.add_argument("--model", default=None, help="embedded key, HF model directory or hub id (default smollm2-135m)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-png", action="store_true", help="write HTML figures only")


def _add_pipeline_commands(sub) -> None:
    sy = sub.add_parser("synthesize", help="Magpie-style self-synthesis of instructions, then cleaning",
                        description="Feed the chat template up to the user's turn, sample what the model "
                        "writes there, clean it. Raw samples go to <out>.raw.jsonl (resumable).")
    sy.add_argument("--n", type=int, default=512, help="raw samples to draw (default 512)")
    sy.add_argument("--out", default="runs/instructions.jsonl", help="cleaned instructions (.jsonl)")
    sy.add_argument("--temperature", type=float, default=1.0)
    sy.add_argument("--top-p", type=float, default=0.95)
    sy.add_argument("--max-new-tokens", type=int, default=64)
    sy.add_argument("--batch-size", type=int, default=32)
    sy.add_argument("--seed", type=int, default=0)
    _common(sy)

    fi = sub.add_parser("filter", help="score instructions by inherent consistency and keep the best")
    fi.add_argument("--instructions", required=True, help=".jsonl ('instruction') or .txt file")
    fi.add_argument("--directions", default="runs/extract", help="output directory of 'icon2-lens extract'")
    fi.add_argument("--scoring", default="dot", choices=["dot", "cosine", "zscore"],
                    help="dot: Icon² Eq. 2-3 (default); cosine; zscore (per criterion and layer)")
    fi.add_argument("--layers", default="all", choices=["all", "control"],
                    help="average over all layers (Icon²) or each criterion's control interval")
    group = fi.add_mutually_exclusive_group()
    group.add_argument("--fraction", type=float, default=0.1, help="keep this top fraction (default 0.1)")
    group.add_argument("--threshold", type=float, default=None, help="keep scores >= this instead")
    fi.add_argument("--batch-size", type=int, default=16)
    fi.add_argument("--out", default="runs/filter")
    _common(fi)

    pa = sub.add_parser("pairs", help="steered chosen/rejected pairs for kept instructions (TRL format)")
    pa.add_argument("--kept", required=True, help="kept.jsonl written by 'icon2-lens filter'")
    pa.add_argument("--directions", default="runs/extract")
    _pair_options(pa)
    pa.add_argument("--out", default="runs/pairs")
    _common(pa)

    sw = sub.add_parser("sweep", help="sweep γ and layer intervals; pick a setting by the documented rule")
    sw.add_argument("--directions", default="runs/extract")
    sw.add_argument("--instructions", default=None, help="instructions to sweep on (default: built-in held-out)")
    sw.add_argument("--n", type=int, default=40, help="instructions sampled, seeded (default 40)")
    sw.add_argument("--seed", type=int, default=0, help="seed of the instruction sample (default 0)")
    sw.add_argument("--gammas", default="-0.06,-0.04,-0.03,-0.02,-0.01,0.01,0.02,0.03,0.04")
    sw.add_argument("--intervals", default="10-19;13-22;16-25", help="';'-separated layer intervals")
    sw.add_argument("--read", default="mean", choices=["mean", "last"],
                    help="judge reading of a response: mean over its tokens (default) or its last token")
    sw.add_argument("--unit", default="relative", choices=["relative", "absolute"])
    sw.add_argument("--positions", default="all", choices=["all", "generated"])
    sw.add_argument("--max-new-tokens", type=int, default=96)
    sw.add_argument("--min-win", type=float, default=0.9)
    sw.add_argument("--min-effect", type=float, default=2.0,
                    help="γ⁻ must separate its pairs by this many sd of the gaps (default 2.0)")
    sw.add_argument("--rechoose", action="store_true",
                    help="re-apply the selection rule to the responses already in --out (no generation)")
    sw.add_argument("--out", default="runs/sweep")
    _common(sw)

    from .dpo import add_dpo_arguments

    dp = sub.add_parser("dpo", help="train with trl.DPOTrainer on a pairs file; save an HF directory")
    add_dpo_arguments(dp)

    ru = sub.add_parser("run", help="extract → synthesize → filter → pairs → dpo → evaluate, with a report")
    ru.add_argument("--config", default=None, help="TOML config (see configs/default.toml)")
    ru.add_argument("--out", default="runs/default")
    ru.add_argument("--stop-after", default=None, help="stop after this stage")
    _common(ru, model=False)

    xp = sub.add_parser("experiment", help="Icon² vs baseline pair sources and AlignEZ: DPO per source, "
                        "judged on held-out instructions; results and cost tables")
    xp.add_argument("--config", default="configs/experiment-small.toml",
                    help="TOML config (default configs/experiment-small.toml)")
    xp.add_argument("--out", default="runs/experiment")
    _common(xp, model=False)

    from .evaluate import add_eval_arguments

    ev = sub.add_parser("eval", help="answer held-out instructions with several systems and compare them "
                        "with judges (win rate, length-controlled win rate, intervals)")
    add_eval_arguments(ev)

    from .alignez import add_alignez_arguments

    az = sub.add_parser("alignez", help="AlignEZ: fit an inference-time edit from self-generated preferences, "
                        "or generate with one")
    add_alignez_arguments(az)


def _pair_options(p: argparse.ArgumentParser) -> None:
    from .pairs import DEFAULT_GAMMA_NEG, DEFAULT_GAMMA_POS

    p.add_argument("--gamma-pos", type=float, default=DEFAULT_GAMMA_POS, help=f"γ⁺ (default {DEFAULT_GAMMA_POS})")
    p.add_argument("--gamma-neg", type=float, default=DEFAULT_GAMMA_NEG, help=f"γ⁻ (default {DEFAULT_GAMMA_NEG})")
    p.add_argument("--layers", default="13-22",
                   help="control interval such as '10-19', or 'criterion' for each one's recommended interval")
    p.add_argument("--unit", default="relative", choices=["relative", "absolute"],
                   help="relative: γ × the layer's mean residual norm (default); absolute: γ × unit vector")
    p.add_argument("--positions", default="all", choices=["all", "generated"])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="instructions per batch")


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
                           n_heldout=args.n_heldout, batch_size=args.batch_size, seed=args.seed,
                           backend=args.backend)
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


def _load(args):
    import torch

    from .models import load_model

    torch.set_grad_enabled(False)
    return load_model(args.model)


def _synthesize(args: argparse.Namespace) -> int:
    from .synthesize import SynthesisConfig, synthesize_instructions

    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out must be a .jsonl file, got {out}")
    model = _load(args)
    config = SynthesisConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size)
    raw, report = synthesize_instructions(model, config, raw_path=out.with_suffix(".raw.jsonl"),
                                          progress=not args.no_progress)
    out.write_text("".join(json.dumps({"instruction": t, "index": i}, ensure_ascii=False) + "\n"
                           for t, i in zip(report.kept, report.kept_index)), encoding="utf-8")
    from .io import write_json

    write_json({"settings": config.settings(), "counts": report.counts}, out.with_suffix(".report.json"))
    print(report.summary())
    print(f"\n{len(report.kept)} instructions in {out.resolve()}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from .instructions import read_instruction_file
    from .io import load_extraction
    from .pipeline import load_config, stage_filter

    instructions = read_instruction_file(args.instructions)
    model = _load(args)
    sets, intervals = load_extraction(args.directions, model=model)
    cfg = load_config(filter={"scoring": args.scoring, "layers": args.layers, "fraction": args.fraction,
                              "threshold": args.threshold, "batch_size": args.batch_size})
    out = Path(args.out)
    if (out / "filter.json").is_file():
        raise ValueError(f"{out} already holds a filter result; choose another --out or delete it")
    kept = stage_filter(model, cfg, instructions, sets, intervals, out, progress=not args.no_progress,
                        png=not args.no_png)
    print((out / "examples.md").read_text(encoding="utf-8"))
    print(f"kept {len(kept)} of {len(instructions)} → {(out / 'kept.jsonl').resolve()}")
    return 0


def _read_kept(path: str):
    from .io import read_jsonl
    from .pairs import KeptInstruction

    rows = read_jsonl(Path(path))
    if not rows:
        raise ValueError(f"{path} holds no kept instructions (or does not exist)")
    out = []
    for n, r in enumerate(rows, start=1):
        try:
            out.append(KeptInstruction(int(r["index"]), str(r["instruction"]), str(r["criterion"]),
                                       float(r.get("consistency", float("nan")))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: expected 'index', 'instruction' and 'criterion' ({e})") from e
    return out


def _pairs(args: argparse.Namespace) -> int:
    from .io import load_extraction, write_json
    from .pairs import generate_pairs
    from .pipeline import _pair_config, load_config, pair_margins

    kept = _read_kept(args.kept)
    model = _load(args)
    sets, intervals = load_extraction(args.directions, model=model)
    cfg = load_config(seed=args.seed, pairs={
        "gamma_pos": args.gamma_pos, "gamma_neg": args.gamma_neg, "layers": args.layers, "unit": args.unit,
        "positions": args.positions, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "do_sample": args.sample})
    config = _pair_config(cfg, model.cfg.n_layers)
    res = generate_pairs(model, kept, sets, config, intervals=intervals, out=args.out,
                         progress=not args.no_progress)
    margins = pair_margins(model, res.records, sets)
    write_json({"counts": res.counts, "margins": margins, "config": config.settings()},
               Path(args.out) / "summary.json")
    print(json.dumps({"counts": res.counts, "margins": margins}, indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .consistency import score_consistency
    from .generate import Decoding
    from .hooks import parse_layers
    from .instructions import load_instructions, read_instruction_file
    from .io import load_extraction
    from .pairs import KeptInstruction
    from .sweep import run_sweep

    out = Path(args.out)
    if args.rechoose:
        return _rechoose(args, out)
    model = _load(args)
    sets, _ = load_extraction(args.directions, model=model)
    pool = read_instruction_file(args.instructions) if args.instructions else load_instructions("heldout")
    if args.n < len(pool):
        pool = [pool[i] for i in sorted(random.Random(args.seed).sample(range(len(pool)), args.n))]
    scores = score_consistency(model, pool, list(sets.values()), progress=False)
    items = [KeptInstruction(i, d, c) for i, (d, c) in enumerate(zip(pool, scores.best_criterion))]
    gammas = [float(g) for g in args.gammas.split(",") if g.strip()]
    intervals = {}
    for spec in args.intervals.split(";"):
        layers = parse_layers(spec.strip(), model.cfg.n_layers)
        intervals[spec.strip()] = layers
    res = run_sweep(model, items, sets, gammas=gammas, intervals=intervals, unit=args.unit,
                    positions=args.positions, decoding=Decoding(max_new_tokens=args.max_new_tokens),
                    read=args.read, min_win=args.min_win, min_effect=args.min_effect, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    res.responses.to_json(out / "responses.jsonl", orient="records", lines=True, force_ascii=False)
    _write_sweep(res, out, png=not args.no_png)
    return 0


def _write_sweep(res, out: Path, *, png: bool) -> None:
    from .io import write_json
    from .sweep import plot_sweep
    from .viz import write_figures_or_warn

    write_json({"by_gamma": res.by_gamma.to_dict(orient="records"), "pairs": res.pairs.to_dict(orient="records"),
                "choice": res.choice, "rule": res.rule}, out / "sweep.json")
    write_figures_or_warn({"sweep": plot_sweep(res)}, out, png=png)
    print(res.by_gamma.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("\nchoice:", json.dumps(res.choice))


def _rechoose(args: argparse.Namespace, out: Path) -> int:
    """Apply the selection rule (with this call's parameters) to the responses of an earlier sweep."""
    import pandas as pd

    from .sweep import choose_setting, summarize_sweep

    path, meta = out / "responses.jsonl", out / "sweep.json"
    if not path.is_file() or not meta.is_file():
        raise ValueError(f"--rechoose needs an earlier sweep in {out} (responses.jsonl and sweep.json)")
    responses = pd.read_json(path, lines=True)
    responses["gamma"] = responses["gamma"].astype(float)  # JSON writes 2.0 as 2
    res = summarize_sweep(responses)
    old = json.loads(meta.read_text(encoding="utf-8")).get("rule", {})
    res.rule = {**old, "min_win": args.min_win, "min_effect": args.min_effect}
    res.choice = choose_setting(res, min_win=args.min_win, min_effect=args.min_effect,
                                max_degenerate=old.get("max_degenerate", 0.05),
                                nll_tolerance=old.get("nll_tolerance", 0.25))
    _write_sweep(res, out, png=not args.no_png)
    return 0


def _run(args: argparse.Namespace) -> int:
    from .pipeline import load_config, run_pipeline

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    run_pipeline(cfg, args.out, progress=not args.no_progress, png=not args.no_png, stop_after=args.stop_after)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; report: {(Path(args.out) / 'report.md').resolve()}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiment import load_experiment_config, run_experiment

    cfg = load_experiment_config(args.config)
    t0 = time.perf_counter()
    run_experiment(cfg, args.out, progress=not args.no_progress, png=not args.no_png)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min; report: {(Path(args.out) / 'report.md').resolve()}")
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
        if args.command == "dpo":
            from .dpo import cli_dpo

            return cli_dpo(args)
        if args.command == "eval":
            from .evaluate import cli_eval, results_frame

            result = cli_eval(args)
            print(results_frame(result).to_string(index=False))
            print(f"\nwritten: {(Path(args.out) / 'eval.json').resolve()}")
            return 0
        if args.command == "alignez":
            from .alignez import cli_alignez

            return cli_alignez(args)
        commands = {"synthesize": _synthesize, "filter": _filter, "pairs": _pairs, "sweep": _sweep, "run": _run,
                    "experiment": _experiment}
        if args.command in commands:
            return commands[args.command](args)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"icon2-lens {args.command}: error: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
