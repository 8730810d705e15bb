"""The comparison experiment: Icon² against baseline pair sources and AlignEZ, on one model.

``icon2-lens experiment --config configs/experiment-small.toml --out runs/NAME``:

1. **Shared inputs.** Directions are extracted, instructions self-synthesized (common to every
   source, so excluded from the per-pair cost) and scored by inherent consistency.
2. **Pairs per source** (:data:`icon2_lens.baselines.SOURCES`), each given the same number of
   instructions: ``icon2`` and the ``sp`` / ``sampling_ranking`` / ``self_rewarding``
   baselines the top-consistency ones, ``icon2_unfiltered`` a seeded random sample of the pool.
   Every source's pairs are then cut to the same count (the smallest any source produced, at most
   ``experiment.n_pairs``).
3. **DPO** from the same base model with identical settings, once per source.
4. **AlignEZ** fitted on the kept instructions (no training), as an inference-time system.
5. **Evaluation** on the shipped held-out set (benign and harmful requests): every trained model
   and AlignEZ against the base, per judge (win rate and length-controlled win rate with
   bootstrap 95 % intervals; every judge is the base model or a transparent rule).
6. **Report**: a results table shaped like the Icon² paper's Table 1, a cost table shaped like
   its Table 4 (wall clock and forward tokens per stage, per kept pair), the DPO reward-accuracy
   curves of every source (App. I), ``report.md`` and ``report.html``.

Every stage writes into its own folder under the run directory and is skipped when finished, so
an interrupted experiment resumes. Costs are metered stage by stage (:mod:`icon2_lens.cost`) and
kept in ``costs.json``; a resumed stage adds the time of its new work only.
"""

import copy
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .cost import CostMeter
from .io import read_jsonl, write_json

__all__ = ["EXPERIMENT_DEFAULTS", "load_experiment_config", "run_experiment", "cost_table", "results_table",
           "reward_curves", "plot_reward_accuracy"]

log = logging.getLogger(__name__)


def _defaults() -> dict[str, Any]:
    from .pipeline import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    cfg.pop("evaluate")
    cfg["synthesize"]["n"] = 512
    cfg["filter"]["fraction"] = 0.2
    cfg["pairs"]["max_new_tokens"] = 96
    cfg["experiment"] = {
        "sources": ["icon2", "sp", "sampling_ranking", "self_rewarding", "icon2_unfiltered"],
        "n_pairs": 48,
        "n_instructions": 60,
        "alignez": True,
    }
    cfg["baselines"] = {
        "n_samples": 5,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_new_tokens": 96,
        "ranking_judge": "inherent",
        "batch_size": 8,
    }
    cfg["alignez"] = {"n_queries": 32, "strength": 1.0}
    cfg["eval"] = {
        "n_benign": 64,
        "n_harmful": 32,
        "max_new_tokens": 96,
        "judges": ["inherent", "self_pairwise", "fluency", "refusal"],
        "batch_size": 16,
    }
    return cfg


EXPERIMENT_DEFAULTS: dict[str, Any] = _defaults()


def load_experiment_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The experiment defaults updated from a TOML file, then ``overrides``; validated.

    Raises:
        ValueError: Unknown keys, sources or judges, or no pairs to make.
    """
    from .pipeline import _merge, read_toml

    cfg = copy.deepcopy(EXPERIMENT_DEFAULTS)
    if path is not None:
        data = read_toml(path)
        alignez = data.pop("alignez", {})
        cfg = _merge(cfg, data)
        cfg["alignez"].update(alignez)  # options of AlignEZConfig, checked when it is built
    overrides = dict(overrides)
    cfg["alignez"].update(overrides.pop("alignez", {}))
    cfg = _merge(cfg, overrides)
    _validate(cfg)
    return cfg


def _validate(cfg: Mapping[str, Any]) -> None:
    from .baselines import SOURCES
    from .judges import JUDGES

    ex = cfg["experiment"]
    unknown = [s for s in ex["sources"] if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown pair source(s) {unknown}; use some of {', '.join(SOURCES)}")
    if not ex["sources"]:
        raise ValueError("experiment.sources is empty: name at least one pair source")
    if len(set(ex["sources"])) != len(ex["sources"]):
        raise ValueError("experiment.sources lists a source twice")
    for key in ("n_pairs", "n_instructions"):
        if int(ex[key]) < 1:
            raise ValueError(f"experiment.{key} must be at least 1, got {ex[key]}")
    bad = [j for j in cfg["eval"]["judges"] if j not in JUDGES]
    if bad:
        raise ValueError(f"unknown judge(s) {bad}; use some of {', '.join(JUDGES)}")
    if cfg["baselines"]["ranking_judge"] not in JUDGES:
        raise ValueError(f"unknown baselines.ranking_judge {cfg['baselines']['ranking_judge']!r}; "
                         f"use one of {', '.join(JUDGES)}")
    from dataclasses import fields

    from .alignez import AlignEZConfig

    known = {f.name for f in fields(AlignEZConfig)} | {"n_queries"}
    bad = sorted(set(cfg["alignez"]) - known)
    if bad:
        raise ValueError(f"unknown config key(s) alignez.{', alignez.'.join(bad)}; known: {', '.join(sorted(known))}")
    if int(cfg["eval"]["n_benign"]) + int(cfg["eval"]["n_harmful"]) < 1:
        raise ValueError("eval.n_benign + eval.n_harmful must be at least 1")


# --------------------------------------------------------------------------------------------
# cost bookkeeping


class _Costs:
    """A :class:`CostMeter` persisted to ``costs.json`` after every stage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meter = CostMeter.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() \
            else CostMeter()

    def stage(self, name: str):
        return self.meter.stage(name)

    def save(self) -> None:
        write_json(self.meter.to_dict(), self.path)


class _MeteredJudge:
    """A judge whose calls are metered as their own stage (the ranking half of a baseline)."""

    def __init__(self, judge: Any, costs: _Costs, stage: str) -> None:
        self._judge, self._costs, self._stage = judge, costs, stage
        self.name, self.description, self.kind = judge.name, judge.description, judge.kind

    def score(self, *args: Any, **kw: Any):
        with self._costs.stage(self._stage):
            return self._judge.score(*args, **kw)


def _done(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# --------------------------------------------------------------------------------------------
# stages


def _pool(out: Path, instructions: list[str]):
    """Every synthesized instruction with its argmax criterion and consistency (from the filter)."""
    from .pairs import KeptInstruction

    rows = read_jsonl(out / "filter" / "scores.jsonl")
    if len(rows) != len(instructions):
        raise RuntimeError(f"{out / 'filter' / 'scores.jsonl'} does not match the synthesized instructions")
    return [KeptInstruction(i, r["instruction"], r["criterion"], float(r["consistency"])) for i, r in enumerate(rows)]


def _judge_layers(cfg, model, intervals):
    """The inherent judge reads the layers the pairs are steered on (each criterion's interval if
    ``pairs.layers = "criterion"``)."""
    from .hooks import parse_layers

    layers = cfg["pairs"]["layers"]
    return intervals if layers == "criterion" else parse_layers(str(layers), model.cfg.n_layers)


def _stage_pairs(source: str, model, cfg, kept, pool, sets, intervals, costs: _Costs, out: Path, progress: bool):
    from .baselines import BaselineConfig, make_pairs
    from .criteria import get_criteria
    from .generate import Decoding
    from .judges import make_judge
    from .pipeline import _pair_config

    marker = out / "summary.json"
    if (done := _done(marker)) is not None:
        return read_jsonl(out / "pairs.jsonl"), done
    ex, bl = cfg["experiment"], cfg["baselines"]
    n = min(int(ex["n_instructions"]), len(kept))  # the same count for every source
    pair_config = _pair_config(cfg, model.cfg.n_layers)
    config = BaselineConfig(
        n_samples=int(bl["n_samples"]),
        sample_decoding=Decoding(do_sample=True, temperature=float(bl["temperature"]), top_p=float(bl["top_p"]),
                                 max_new_tokens=int(bl["max_new_tokens"]), seed=cfg["seed"]),
        greedy_decoding=Decoding(max_new_tokens=int(bl["max_new_tokens"]), seed=cfg["seed"]),
        batch_size=int(bl["batch_size"]),
    )
    judge = None
    if source == "sampling_ranking":
        judge = _MeteredJudge(make_judge(bl["ranking_judge"], model, direction_sets=sets,
                                         layers=_judge_layers(cfg, model, intervals)),
                              costs, f"{source}/judge")
    elif source == "self_rewarding":
        judge = _MeteredJudge(make_judge("self_rating", model), costs, f"{source}/judge")
    items = pool if source == "icon2_unfiltered" else kept[:n]
    with costs.stage(f"{source}/pairs"):
        res = make_pairs(source, model, items, direction_sets=sets, intervals=intervals,
                         criteria=get_criteria(cfg["extract"]["criteria"]), judge=judge,
                         pair_config=pair_config, config=config, n=n, seed=cfg["seed"], out=out,
                         progress=progress)
    costs.save()
    summary = {"source": source, "counts": res.counts, "n_instructions": n}
    write_json(summary, marker)
    return res.records, summary


def _stage_dpo(source: str, cfg, model_dir: str, pairs, costs: _Costs, out: Path, png: bool):
    from .dpo import DPOSettings, train_dpo

    marker = out / "dpo_summary.json"
    if (done := _done(marker)) is not None:
        return done
    settings = DPOSettings(**{**cfg["dpo"], "seed": cfg["seed"]})
    with costs.stage(f"{source}/dpo"), torch.enable_grad():
        res = train_dpo(model_dir, pairs, out, settings=settings, png=png)
    costs.save()
    hist = [h for h in res.log_history if "rewards/accuracies" in h]
    summary = {"source": source, "n_records": res.n_records, "n_steps": res.n_steps, "saturated": res.saturated,
               "warnings": list(res.warnings), "final_reward_accuracy": hist[-1].get("rewards/accuracies") if hist else None,
               "model_dir": str(res.model_dir)}
    del res
    write_json(summary, marker)
    return summary


def _stage_alignez(model, cfg, kept, costs: _Costs, out: Path, progress: bool) -> Path:
    from .alignez import AlignEZConfig, fit_alignez

    marker = out / "fit.json"
    if _done(marker) is not None:
        return out
    options = {k: v for k, v in cfg["alignez"].items() if k != "n_queries"}
    options.setdefault("seed", cfg["seed"])
    config = AlignEZConfig(**options)
    queries = [k.instruction for k in kept[: int(cfg["alignez"]["n_queries"])]]
    with costs.stage("alignez/fit"):
        edit = fit_alignez(model, queries, config, progress=progress, out=out / "fit")
    costs.save()
    edit.save(out)
    write_json({"n_queries": len(queries), "settings": config.settings()}, marker)
    return out


def _eval_records(cfg) -> list[dict[str, Any]]:
    from .instructions import load_eval_instructions

    ev = cfg["eval"]
    out = []
    if int(ev["n_benign"]):
        out += load_eval_instructions("benign", n=int(ev["n_benign"]))
    if int(ev["n_harmful"]):
        out += load_eval_instructions("harmful", n=int(ev["n_harmful"]))
    return out


def _stage_eval(model, cfg, sets, intervals, systems, out: Path, progress: bool) -> dict[str, Any]:
    from .evaluate import evaluate_systems
    from .generate import Decoding
    from .judges import make_judge

    marker = out / "eval.json"
    if (done := _done(marker)) is not None:
        return done
    ev = cfg["eval"]
    judges = [make_judge(name, model, direction_sets=sets, layers=_judge_layers(cfg, model, intervals))
              for name in ev["judges"]]
    return evaluate_systems(model, systems, _eval_records(cfg), judges, out=out,
                            decoding=Decoding(max_new_tokens=int(ev["max_new_tokens"])),
                            batch_size=int(ev["batch_size"]), seed=cfg["seed"], progress=progress)


# --------------------------------------------------------------------------------------------
# tables and figures


#: Data-construction stages charged to each source (synthesis is common to all and excluded).
CHARGED: dict[str, tuple[str, ...]] = {
    "icon2": ("icon2/extract", "icon2/filter", "icon2/pairs"),
    "icon2_unfiltered": ("icon2/extract", "icon2/filter", "icon2_unfiltered/pairs"),
    "sp": ("sp/pairs",),
    "sampling_ranking": ("sampling_ranking/pairs",),
    "self_rewarding": ("self_rewarding/pairs",),
}


def cost_table(costs: Mapping[str, Mapping[str, Any]], pairs_made: Mapping[str, int]) -> pd.DataFrame:
    """Per source: seconds and forward tokens of each stage and in total per kept pair (Table 4's shape).

    A source's ``pairs`` stage includes its judge (shown separately as ``judge``); ``icon2`` and
    ``icon2_unfiltered`` are charged the shared direction extraction and consistency scoring in
    full. Instruction synthesis, common to every source, is listed on its own and not charged.
    """
    rows = []
    for source, made in pairs_made.items():
        stages = CHARGED[source]
        judge = costs.get(f"{source}/judge", {})
        seconds = sum(costs.get(s, {}).get("seconds", 0.0) for s in stages)
        tokens = sum(costs.get(s, {}).get("forward_tokens", 0) + (judge.get("forward_tokens", 0) if s.endswith("/pairs") else 0)
                     for s in stages)
        gen = costs.get(f"{source}/pairs", {})
        row = {
            "source": source,
            "extract s": costs.get("icon2/extract", {}).get("seconds", 0.0) if "icon2/extract" in stages else 0.0,
            "filter s": costs.get("icon2/filter", {}).get("seconds", 0.0) if "icon2/filter" in stages else 0.0,
            "generate s": gen.get("seconds", 0.0) - judge.get("seconds", 0.0),
            "judge s": judge.get("seconds", 0.0),
            "pairs made": made,
            "total s": seconds,
            "s per pair": seconds / made if made else math.nan,
            "forward tokens": tokens,
            "tokens per pair": tokens / made if made else math.nan,
            "dpo s": costs.get(f"{source}/dpo", {}).get("seconds", math.nan),
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    if "icon2" in set(df["source"]):
        icon2 = df.loc[df["source"] == "icon2", "s per pair"].iloc[0]
        df["icon2 ÷ this (s/pair)"] = [icon2 / v if v else math.nan for v in df["s per pair"]]
    return df


def results_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system, per judge its win rate and LC win rate against the reference (Table 1's shape)."""
    rows = []
    for system, by_judge in result["comparisons"].items():
        row: dict[str, Any] = {"system": system}
        order = result.get("judge_order") or sorted(by_judge)
        for judge in order:
            if judge not in by_judge:
                continue
            c = by_judge[judge]
            row[f"{judge} WR"] = _ci(c["win_rate"])
            row[f"{judge} LC WR"] = _ci(c["lc_win_rate"])
        stats = result["stats"].get(system, {})
        row["refusal (harmful)"] = stats.get("refusal_harmful")
        row["refusal (benign)"] = stats.get("refusal_benign")
        row["tokens"] = stats.get("mean_tokens")
        rows.append(row)
    ref = result["reference"]
    stats = result["stats"].get(ref, {})
    rows.append({"system": f"{ref} (reference)", "refusal (harmful)": stats.get("refusal_harmful"),
                 "refusal (benign)": stats.get("refusal_benign"), "tokens": stats.get("mean_tokens")})
    return pd.DataFrame(rows)


def _ci(x: Mapping[str, Any] | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x['value']:.1f} [{100 * x['low']:.1f}, {100 * x['high']:.1f}]"


def reward_curves(root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Per source, TRL's logged ``rewards/accuracies`` and ``rewards/margins`` per step."""
    root = Path(root)
    out = {}
    for log_path in sorted(root.glob("dpo/*/dpo_log.json")):
        hist = json.loads(log_path.read_text(encoding="utf-8"))["log_history"]
        out[log_path.parent.name] = [
            {"step": h.get("step"), "accuracy": h["rewards/accuracies"], "margin": h.get("rewards/margins")}
            for h in hist if "rewards/accuracies" in h
        ]
    return out


def saturation_steps(curves: Mapping[str, list[dict[str, Any]]], *, threshold: float = 0.97,
                     window: int = 2) -> pd.DataFrame:
    """Per source: the first step whose reward accuracy, averaged over ``window`` logged steps,
    reaches ``threshold`` (as a step and a fraction of training), and the final accuracy."""
    rows = []
    for source, pts in curves.items():
        acc = [p["accuracy"] for p in pts]
        first = None
        for end in range(window, len(acc) + 1):
            if sum(acc[end - window : end]) / window >= threshold:
                first = pts[end - 1]["step"]
                break
        last = pts[-1]["step"] if pts else None
        rows.append({"source": source, "steps": last, f"first step ≥ {threshold}": first,
                     "fraction of training": (first / last) if first and last else None,
                     "mean accuracy": sum(acc) / len(acc) if acc else None,
                     "final margin": pts[-1]["margin"] if pts else None})
    return pd.DataFrame(rows)


def plot_reward_accuracy(curves: Mapping[str, list[dict[str, Any]]], *, template: str = "plotly_white"):
    """Reward accuracy and margin per step, one line per pair source (Icon² App. I)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("DPO reward accuracy", "DPO reward margin"))
    for source, pts in curves.items():
        steps = [p["step"] for p in pts]
        fig.add_trace(go.Scatter(x=steps, y=[p["accuracy"] for p in pts], name=source, legendgroup=source,
                                 mode="lines+markers"), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[p["margin"] for p in pts], name=source, legendgroup=source,
                                 showlegend=False, mode="lines+markers"), row=2, col=1)
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="margin", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(template=template, width=850, height=650, title="DPO reward curves per pair source")
    return fig


def write_experiment_report(root: str | Path, *, png: bool = True) -> tuple[Path, Path]:
    """``report.md`` / ``report.html`` of an experiment directory, from the files its stages wrote."""
    from .report import render_html, render_markdown
    from .viz import write_figures_or_warn

    root = Path(root)
    cfg = _done(root / "config.json") or {}
    costs = _done(root / "costs.json") or {}
    blocks: list[tuple[str, Any]] = [("h1", f"icon2-lens experiment {root.name}")]
    blocks.append(("p", f"Model {cfg.get('model')}, seed {cfg.get('seed')}; sources "
                        f"{', '.join(cfg.get('experiment', {}).get('sources', []))}."))
    ev = _done(root / "eval" / "eval.json")
    blocks.append(("h2", "Results (Table 1 shape): win rate against the base model, %"))
    if ev:
        blocks.append(("table", results_table(ev)))
        blocks.append(("p", f"n = {ev['n']} held-out instructions ({ev['n_harmful']} harmful); the refusal judge "
                            f"is read on the harmful ones only. Win rates count ties as half; 95 % bootstrap "
                            "intervals; LC = length-controlled."))
        blocks.append(("table", pd.DataFrame([{"judge": k, "what it is": v} for k, v in ev["judges"].items()])))
    else:
        blocks.append(("p", "pending"))
    made = {}
    for source in cfg.get("experiment", {}).get("sources", []):
        summary = _done(root / "pairs" / source / "summary.json")
        if summary:
            made[source] = summary["counts"]["pairs"]
    blocks.append(("h2", "Cost (Table 4 shape): data construction per kept pair"))
    if made:
        blocks.append(("table", cost_table(costs, made)))
        syn = costs.get("common/synthesize", {})
        blocks.append(("p", f"Instruction synthesis (common to every source, not charged): "
                            f"{syn.get('seconds', 0):.0f} s, {syn.get('forward_tokens', 0)} forward tokens."))
    else:
        blocks.append(("p", "pending"))
    curves = reward_curves(root)
    blocks.append(("h2", "DPO reward curves per source (App. I)"))
    if curves:
        write_figures_or_warn({"reward_curves": plot_reward_accuracy(curves)}, root / "figures", png=png)
        for ext in ("png", "html"):
            if (root / "figures" / f"reward_curves.{ext}").is_file():
                blocks.append(("img" if ext == "png" else "link",
                               "figures/reward_curves.png" if ext == "png" else ("interactive", "figures/reward_curves.html")))
        blocks.append(("table", saturation_steps(curves)))
    else:
        blocks.append(("p", "pending"))
    pair_rows = []
    for source in made:
        summary = _done(root / "pairs" / source / "summary.json")
        pair_rows.append({"source": source, **{k: v for k, v in summary["counts"].items() if k != "dropped"},
                          "dropped": json.dumps(summary["counts"].get("dropped", {}))})
    if pair_rows:
        blocks.append(("h2", "Pairs per source"))
        blocks.append(("table", pd.DataFrame(pair_rows)))
    md, page = root / "report.md", root / "report.html"
    md.write_text(render_markdown(blocks), encoding="utf-8")
    page.write_text(render_html(blocks, f"icon2-lens experiment {root.name}"), encoding="utf-8")
    return md, page


# --------------------------------------------------------------------------------------------
# the run


def run_experiment(cfg: dict[str, Any], out: str | Path, *, progress: bool = True, png: bool = True) -> dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg`` into ``out``; returns the evaluation."""
    from .evaluate import SystemSpec
    from .models import load_model, model_source
    from .pipeline import _check_config, stage_extract, stage_filter, stage_synthesize

    _validate(cfg)
    out = Path(out)
    _check_config(out, cfg)
    costs = _Costs(out / "costs.json")
    torch.manual_seed(cfg["seed"])
    model = load_model(cfg["model"])
    base_dir = model_source(model)
    ex = cfg["experiment"]
    with torch.no_grad():
        with costs.stage("icon2/extract"):
            sets, intervals = stage_extract(model, cfg, out / "extract", progress=progress)
        costs.save()
        with costs.stage("common/synthesize"):
            instructions = stage_synthesize(model, cfg, out / "synthesize", progress=progress)
        costs.save()
        with costs.stage("icon2/filter"):
            kept = stage_filter(model, cfg, instructions, sets, intervals, out / "filter", progress=progress, png=png)
        costs.save()
        if len(kept) < int(ex["n_instructions"]):
            log.warning("only %d instructions kept, fewer than experiment.n_instructions=%d", len(kept),
                        ex["n_instructions"])
        pool = _pool(out, instructions)
        pairs = {}
        for source in ex["sources"]:
            records, _ = _stage_pairs(source, model, cfg, kept, pool, sets, intervals, costs,
                                      out / "pairs" / source, progress)
            pairs[source] = records
    n_train = min(int(ex["n_pairs"]), *(len(r) for r in pairs.values()))
    if n_train < 1:
        empty = [s for s, r in pairs.items() if not r]
        raise RuntimeError(f"no pairs from {empty}: raise experiment.n_instructions")
    if n_train < int(ex["n_pairs"]):
        log.warning("every source trains on %d pairs (fewest any source made)", n_train)
    for source in ex["sources"]:
        _stage_dpo(source, cfg, base_dir, pairs[source][:n_train], costs, out / "dpo" / source, png)
    systems = [SystemSpec("base", "base")]
    systems += [SystemSpec(source, "model", str(out / "dpo" / source / "model")) for source in ex["sources"]]
    with torch.no_grad():
        if ex["alignez"]:
            edit_dir = _stage_alignez(model, cfg, kept, costs, out / "alignez", progress)
            systems.append(SystemSpec("alignez", "alignez", str(edit_dir), cfg["alignez"].get("strength")))
        result = _stage_eval(model, cfg, sets, intervals, systems, out / "eval", progress)
    write_json({"n_train_pairs": n_train}, out / "experiment.json")
    write_experiment_report(out, png=png)
    return result
