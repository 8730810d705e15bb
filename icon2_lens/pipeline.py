"""The Icon² pipeline end to end: extract → synthesize → filter → pairs → dpo → evaluate → report.

Each stage writes into its own folder under the run directory and marks itself finished by
writing its summary JSON last; re-running skips finished stages and lets unfinished ones resume
from what they wrote (extraction per criterion, synthesis per batch of samples, pairs per batch).
The whole configuration is recorded in ``config.json``; resuming with a different configuration
raises instead of mixing results.

Configuration: a TOML file (see ``configs/default.toml``) with sections ``[extract]``,
``[synthesize]``, ``[filter]``, ``[pairs]``, ``[dpo]`` and ``[evaluate]``; missing keys take the
defaults of :data:`DEFAULTS`.
"""

import copy
import json
import logging
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._types import LensModel
from .io import read_jsonl, write_json

__all__ = ["DEFAULTS", "load_config", "run_pipeline", "STAGES"]

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("extract", "synthesize", "filter", "pairs", "dpo", "evaluate")

DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m",
    "seed": 0,
    "extract": {
        "criteria": ["general", "helpfulness", "honesty", "harmlessness"],
        "method": "pca_symmetric",
        "n_instructions": 128,
        "n_heldout": 48,
        "site": "resid_post",
        "batch_size": 16,
        "backend": "fast",
    },
    "synthesize": {"n": 1024, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 64, "batch_size": 32},
    "filter": {"scoring": "dot", "layers": "all", "fraction": 0.1, "threshold": None, "batch_size": 16},
    "pairs": {
        "gamma_pos": 0.02,
        "gamma_neg": -0.02,
        "layers": "13-22",
        "unit": "relative",
        "positions": "all",
        "max_new_tokens": 128,
        "batch_size": 16,
        "do_sample": False,
    },
    "dpo": {
        "beta": 0.1,
        "learning_rate": 5e-6,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 4,
        "max_length": 384,
    },
    "evaluate": {"n_heldout": 96, "max_new_tokens": 96, "batch_size": 16},
}


def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            raise ValueError(f"unknown config key {where}{key!r}; known: {', '.join(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {where}{key!r} must be a table")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a dict; a missing file or bad TOML raises ``ValueError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML ({e})") from e


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The defaults, updated from a TOML file and then from ``overrides`` (section -> dict)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, read_toml(path))
    return _merge(cfg, overrides)


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------------------------
# stages


def stage_extract(model: LensModel, cfg: dict[str, Any], out: Path, *, progress: bool = True):
    from .criteria import get_criteria
    from .extract import ExtractConfig, run_extraction
    from .io import load_extraction

    ex = cfg["extract"]
    config = ExtractConfig(method=ex["method"], site=ex["site"], n_instructions=ex["n_instructions"],
                           n_heldout=ex["n_heldout"], batch_size=ex["batch_size"], seed=cfg["seed"],
                           backend=ex["backend"])
    run_extraction(model, get_criteria(ex["criteria"]), config=config, out=out, progress=progress)
    return load_extraction(out, model=model, criteria=ex["criteria"])


def stage_synthesize(model: LensModel, cfg: dict[str, Any], out: Path, *, progress: bool = True) -> list[str]:
    from .synthesize import SynthesisConfig, synthesize_instructions

    marker = out / "synthesis.json"
    if (done := _done(marker)) is not None:
        return [r["instruction"] for r in read_jsonl(out / "instructions.jsonl")] if done else []
    sy = cfg["synthesize"]
    config = SynthesisConfig(n=sy["n"], temperature=sy["temperature"], top_p=sy["top_p"],
                             max_new_tokens=sy["max_new_tokens"], seed=cfg["seed"], batch_size=sy["batch_size"])
    out.mkdir(parents=True, exist_ok=True)
    raw, report = synthesize_instructions(model, config, raw_path=out / "raw.jsonl", progress=progress)
    if not report.kept:
        raise RuntimeError(f"no synthesized instruction survived cleaning ({report.counts}); raise synthesize.n")
    lines = "".join(json.dumps({"instruction": t, "index": i}, ensure_ascii=False) + "\n"
                    for t, i in zip(report.kept, report.kept_index))
    (out / "instructions.jsonl").write_text(lines, encoding="utf-8")
    write_json({"settings": config.settings(), "n_raw": len(raw), "counts": report.counts,
                "examples": report.kept[:10]}, marker)
    return list(report.kept)


def stage_filter(model: LensModel, cfg: dict[str, Any], instructions: list[str], sets, intervals, out: Path,
                 *, progress: bool = True, png: bool = True):
    from .consistency import score_consistency, score_summary
    from .pairs import KeptInstruction
    from .report import markdown_table
    from .viz import plot_consistency, write_figures_or_warn

    marker = out / "filter.json"
    if _done(marker) is not None:
        return [KeptInstruction(r["index"], r["instruction"], r["criterion"], r["consistency"])
                for r in read_jsonl(out / "kept.jsonl")]
    fi = cfg["filter"]
    scores = score_consistency(model, instructions, list(sets.values()), scoring=fi["scoring"], layers=fi["layers"],
                               control_layers=intervals, batch_size=fi["batch_size"], progress=progress)
    sel = scores.select(fraction=fi["fraction"], threshold=fi["threshold"])
    out.mkdir(parents=True, exist_ok=True)
    table = scores.table(sel)
    table.to_json(out / "scores.jsonl", orient="records", lines=True, force_ascii=False)
    crit = scores.best_criterion
    kept = [KeptInstruction(i, instructions[i], crit[i], float(scores.best[i])) for i in sel.kept]
    (out / "kept.jsonl").write_text(
        "".join(json.dumps({"index": k.index, "instruction": k.instruction, "criterion": k.criterion,
                            "consistency": k.consistency}, ensure_ascii=False) + "\n" for k in kept),
        encoding="utf-8")
    top, bottom = scores.examples(5)
    (out / "examples.md").write_text(
        "### Most consistent\n\n" + markdown_table(top) + "\n\n### Least consistent\n\n"
        + markdown_table(bottom) + "\n", encoding="utf-8")
    write_figures_or_warn({"consistency": plot_consistency(scores, sel)}, out, png=png)
    write_json({"settings": scores.settings, "summary": score_summary(scores, sel)}, marker)
    return kept


def _pair_config(cfg: dict[str, Any], n_layers: int):
    from .generate import Decoding
    from .hooks import parse_layers
    from .pairs import PairConfig

    pa = cfg["pairs"]
    layers = None if pa["layers"] == "criterion" else tuple(parse_layers(str(pa["layers"]), n_layers))
    return PairConfig(gamma_pos=float(pa["gamma_pos"]), gamma_neg=float(pa["gamma_neg"]), layers=layers,
                      unit=pa["unit"], positions=pa["positions"], batch_size=pa["batch_size"],
                      decoding=Decoding(max_new_tokens=pa["max_new_tokens"], do_sample=pa["do_sample"],
                                        seed=cfg["seed"]))


def pair_margins(model: LensModel, records: list[dict[str, Any]], sets, *, progress: bool = False) -> dict[str, Any]:
    """How often the chosen response scores above the rejected one along its direction (unsteered judge)."""
    from .score import score_responses

    if not records:
        return {"n": 0}
    ins = [r["prompt"][0]["content"] for r in records]
    ds = [sets[r["icon2_criterion"]] for r in records]
    layers = [r["icon2_layers"] for r in records]
    a = score_responses(model, ins, [r["chosen"][0]["content"] for r in records], ds, layers=layers, progress=progress)
    b = score_responses(model, ins, [r["rejected"][0]["content"] for r in records], ds, layers=layers,
                        progress=progress)
    gap = a["projection"] - b["projection"]
    return {
        "n": len(records),
        "chosen_above_rejected": float((gap > 0).float().mean()),
        "mean_gap": float(gap.mean()),
        "chosen_nll": float(a["nll"].nanmean()),
        "rejected_nll": float(b["nll"].nanmean()),
        "chosen_tokens": float(a["n_tokens"].mean()),
        "rejected_tokens": float(b["n_tokens"].mean()),
        "judge": "unsteered model: projection of the response's residual stream (mean over its tokens) on the "
                 "criterion's direction, averaged over the steered layers",
    }


def stage_pairs(model: LensModel, cfg: dict[str, Any], kept, sets, intervals, out: Path, *, progress: bool = True):
    from .pairs import generate_pairs

    marker = out / "summary.json"
    if (done := _done(marker)) is not None:
        return read_jsonl(out / "pairs.jsonl"), done
    config = _pair_config(cfg, model.cfg.n_layers)
    res = generate_pairs(model, kept, sets, config, intervals=intervals, out=out, progress=progress)
    summary = {"counts": res.counts, "margins": pair_margins(model, res.records, sets, progress=progress),
               "config": config.settings()}
    write_json(summary, marker)
    return res.records, summary


def stage_dpo(cfg: dict[str, Any], model_dir: str, pairs: list[dict[str, Any]], out: Path):
    from .dpo import DPOSettings, train_dpo

    marker = out / "dpo_summary.json"
    if (done := _done(marker)) is not None:
        return done
    if not pairs:
        raise RuntimeError("no pairs to train on")
    settings = DPOSettings(**{**cfg["dpo"], "seed": cfg["seed"]})
    res = train_dpo(model_dir, pairs, out, settings=settings)
    hist = [h for h in res.log_history if "rewards/accuracies" in h]
    summary = {
        "model_dir": str(res.model_dir),
        "n_records": res.n_records,
        "n_steps": res.n_steps,
        "saturated": res.saturated,
        "warnings": list(res.warnings),
        "final_loss": hist[-1].get("loss") if hist else None,
        "final_reward_accuracy": hist[-1].get("rewards/accuracies") if hist else None,
        "final_reward_margin": hist[-1].get("rewards/margins") if hist else None,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
    }
    write_json(summary, marker)
    return summary


def stage_evaluate(base: LensModel, trained_dir: str, cfg: dict[str, Any], sets, intervals, out: Path,
                   *, progress: bool = True) -> dict[str, Any]:
    """Held-out instructions answered (greedy, unsteered) by the base and the trained model, both judged
    by the base model along each instruction's argmax criterion direction; paired bootstrap intervals."""
    from .chat import render_chat
    from .consistency import score_consistency
    from .generate import Decoding, generate
    from .instructions import load_instructions
    from .models import load_model
    from .score import degeneracy, read_responses
    from .stats import paired_summary

    marker = out / "evaluate.json"
    if (done := _done(marker)) is not None:
        return done
    ev = cfg["evaluate"]
    held = load_instructions("heldout")[-ev["n_heldout"]:]
    fi = cfg["filter"]
    scores = score_consistency(base, held, list(sets.values()), scoring=fi["scoring"], layers=fi["layers"],
                               control_layers=intervals, progress=False)
    crit = scores.best_criterion
    config = _pair_config(cfg, base.cfg.n_layers)
    lay_of = {c: list(config.layers) if config.layers is not None else list(intervals[c]) for c in sets}
    decoding = Decoding(max_new_tokens=ev["max_new_tokens"])
    prompts = [render_chat(base.tokenizer, d) for d in held]
    base_out = generate(base, prompts, decoding, batch_size=ev["batch_size"], progress=progress)
    trained = load_model(trained_dir)
    trained_out = generate(trained, prompts, decoding, batch_size=ev["batch_size"], progress=progress)
    del trained
    # one forward per answer; every criterion's direction is then read off the same residuals
    need = sorted({x for lay in lay_of.values() for x in lay})
    site = next(iter(sets.values())).site
    ra = read_responses(base, held, [g.text for g in trained_out], layers=need, site=site)
    rb = read_responses(base, held, [g.text for g in base_out], layers=need, site=site)
    pa = {c: ra.project(sets[c], layers=lay_of[c]) for c in sets}
    pb = {c: rb.project(sets[c], layers=lay_of[c]) for c in sets}
    a = {"projection": torch.stack([pa[c][i] for i, c in enumerate(crit)]), "nll": ra.nll, "n_tokens": ra.n_tokens}
    b = {"projection": torch.stack([pb[c][i] for i, c in enumerate(crit)]), "nll": rb.nll, "n_tokens": rb.n_tokens}
    gap = a["projection"] - b["projection"]
    changed = [t.text != s.text for t, s in zip(trained_out, base_out)]
    # every held-out answer judged along every criterion: which directions did training move?
    by_direction = {c: paired_summary(pa[c].numpy(), pb[c].numpy(), seed=cfg["seed"])["mean_gap"] for c in sets}

    def bad(gens) -> float:
        return sum(degeneracy(g.text, g.token_ids) is not None for g in gens) / len(gens)

    per_criterion = {}
    for c in sorted(set(crit)):
        idx = [i for i, x in enumerate(crit) if x == c]
        per_criterion[c] = {"n": len(idx), "mean_gap": float(gap[idx].mean()),
                            "trained_above_base": float((gap[idx] > 0).float().mean())}
    result = {
        "n": len(held),
        "trained_vs_base": paired_summary(a["projection"].numpy(), b["projection"].numpy(), seed=cfg["seed"]),
        "mean_projection_trained": float(a["projection"].mean()),
        "mean_projection_base": float(b["projection"].mean()),
        "nll_trained_answers": float(a["nll"].nanmean()),
        "nll_base_answers": float(b["nll"].nanmean()),
        "tokens_trained": float(a["n_tokens"].mean()),
        "tokens_base": float(b["n_tokens"].mean()),
        "degenerate_trained": bad(trained_out),
        "degenerate_base": bad(base_out),
        "answers_changed": sum(changed) / len(changed),
        "per_criterion": per_criterion,
        "gap_by_direction": by_direction,
        "judge": "base model: projection of the answer's residual stream (mean over its tokens) on the "
                 "instruction's argmax-criterion direction, averaged over the control layers; win rate counts "
                 "ties as half; 95 % paired bootstrap intervals",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.jsonl").write_text(
        "".join(json.dumps({"instruction": d, "criterion": c, "base": s.text, "trained": t.text,
                            "gap": float(g)}, ensure_ascii=False) + "\n"
                for d, c, s, t, g in zip(held, crit, base_out, trained_out, gap)), encoding="utf-8")
    write_json(result, marker)
    return result


# --------------------------------------------------------------------------------------------
# the run


def _check_config(out: Path, cfg: dict[str, Any]) -> None:
    path = out / "config.json"
    if path.is_file():
        have = json.loads(path.read_text(encoding="utf-8"))
        if have != json.loads(json.dumps(cfg)):
            raise ValueError(
                f"{out} holds a run made with another configuration; choose another --out or delete it"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(cfg, path)


def run_pipeline(cfg: dict[str, Any], out: str | Path, *, progress: bool = True, png: bool = True,
                 stop_after: str | None = None) -> dict[str, Any]:
    """Run (or resume) every stage and write ``report.md`` / ``report.html``; returns the summary."""
    from .models import load_model, model_source
    from .report import write_report

    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; use one of {', '.join(STAGES)}")
    out = Path(out)
    _check_config(out, cfg)
    timings_path = out / "timings.json"
    timings: dict[str, float] = _done(timings_path) or {}
    summary: dict[str, Any] = {"config": cfg}
    torch.manual_seed(cfg["seed"])

    def timed(name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        res = fn(*args, **kw)
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - t0)
        write_json(timings, timings_path)
        return res

    model = load_model(cfg["model"])
    with torch.no_grad():
        sets, intervals = timed("extract", stage_extract, model, cfg, out / "extract", progress=progress)
        summary["intervals"] = {k: f"{v[0]}-{v[-1]}" for k, v in intervals.items()}
        if stop_after != "extract":
            instructions = timed("synthesize", stage_synthesize, model, cfg, out / "synthesize", progress=progress)
        if stop_after not in ("extract", "synthesize"):
            kept = timed("filter", stage_filter, model, cfg, instructions, sets, intervals, out / "filter",
                         progress=progress, png=png)
        if stop_after not in ("extract", "synthesize", "filter"):
            pairs, _ = timed("pairs", stage_pairs, model, cfg, kept, sets, intervals, out / "pairs",
                             progress=progress)
    if stop_after in (None, "dpo", "evaluate"):
        with torch.enable_grad():
            timed("dpo", stage_dpo, cfg, model_source(model), pairs, out / "dpo")
    if stop_after in (None, "evaluate"):
        trained_dir = str(out / "dpo" / "model")
        with torch.no_grad():
            timed("evaluate", stage_evaluate, model, trained_dir, cfg, sets, intervals, out / "evaluate",
                  progress=progress)
    summary["timings"] = timings
    write_report(out, png=png)
    return summary
