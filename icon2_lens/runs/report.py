"""``report.md`` and ``report.html`` of a run or an experiment, built from the files each stage wrote.

The report is assembled as a list of blocks (heading, paragraph, table, figure, code) rendered
twice, to Markdown and to a self-contained HTML page, so both always say the same thing. Stages
that have not run yet are listed as pending, so a report of a partial run is still valid.
"""

import json
from pathlib import Path
from typing import Any

import pandas as pd

from icon2_lens._files import read_jsonl, read_marker
from icon2_lens.dpo.curves import (
    SaturationRule,
    plot_reward_accuracy,
    reward_curves,
    saturation_steps,
)
from icon2_lens.figures import write_figures_or_warn
from icon2_lens.instructions.clean import STEPS
from icon2_lens.pages import Block, render_html, render_markdown, write_pages

from .tables import cost_table, results_table

__all__ = [
    "build_report",
    "write_report",
    "write_experiment_report",
    "render_markdown",
    "render_html",
]


def _load(path: Path) -> Any:
    return read_marker(path)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def _interval(x: Any) -> str:
    if isinstance(x, dict) and {"value", "low", "high"} <= set(x):
        return f"{x['value']:.3f} [{x['low']:.3f}, {x['high']:.3f}] (n={x.get('n')})"
    return _fmt(x)


def _kv(d: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"quantity": list(d), "value": [_fmt(v) for v in d.values()]})


def _figure(root: Path, folder: str, name: str) -> list[Block]:
    """Image and link blocks for figure ``name`` in ``root/folder``, addressed relative to ``root``
    (where the report is written)."""
    rel = f"{folder}/{name}"
    blocks: list[Block] = []
    if (root / f"{rel}.png").is_file():
        blocks.append(("img", f"{rel}.png"))
    if (root / f"{rel}.html").is_file():
        blocks.append(("link", (f"interactive figure: {rel}.html", f"{rel}.html")))
    return blocks


def build_report(out: str | Path) -> list[Block]:
    """Blocks describing every stage of the run in ``out``."""
    out = Path(out)
    cfg = _load(out / "config.json") or {}
    timings = _load(out / "timings.json") or {}
    b: list[Block] = [("h1", f"icon2-lens run: {out.name}")]
    b.append(
        (
            "p",
            f"Model `{cfg.get('model')}`, seed {cfg.get('seed')}. Stage times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
            + f"; total {sum(timings.values()) / 60:.1f} min.",
        )
    )

    b.append(("h2", "1. Directions"))
    diag = _load(out / "extract" / "diagnostics.json")
    if diag:
        # one summary row per criterion (a list in diagnostics.json; older files may hold a mapping)
        summary = diag.get("summary") or []
        if isinstance(summary, dict):
            summary = [{"criterion": name, **s} for name, s in summary.items()]
        rows = [{k: _fmt(v) for k, v in s.items()} for s in summary]
        if rows:
            b.append(("table", pd.DataFrame(rows)))
        for name in cfg.get("extract", {}).get("criteria", []):
            b += _figure(out, "extract/figures", f"{name}_layer_selection")
        b += _wording_blocks(out, cfg)
    else:
        b.append(("p", "pending"))

    b.append(("h2", "2. Self-synthesized instructions"))
    syn = _load(out / "synthesize" / "synthesis.json")
    if syn:
        b.append(("p", "Raw Magpie-style samples, then how many survive each cleaning step:"))
        counts = syn["counts"]
        b.append(("table", pd.DataFrame([{k: counts[k] for k in STEPS if k in counts}])))
        b.append(("pre", "\n".join(syn.get("examples", [])[:8])))
    else:
        b.append(("p", "pending"))

    b.append(("h2", "3. Inherent-consistency filter"))
    fil = _load(out / "filter" / "filter.json")
    if fil:
        s = fil["summary"]
        b.append(
            (
                "p",
                f"Scoring `{fil['settings'].get('scoring')}` over layers `{fil['settings'].get('layers')}`; "
                f"kept {s['n_kept']} of {s['n_scored']} ({s['rule']} {s['value']}), cutoff {_fmt(s['cutoff'])}.",
            )
        )
        b.append(
            (
                "table",
                pd.DataFrame(
                    {
                        "criterion": list(s["criterion_counts_all"]),
                        "argmax (all)": list(s["criterion_counts_all"].values()),
                        "kept": list(s["criterion_counts_kept"].values()),
                    }
                ),
            )
        )
        b += _figure(out, "filter", "consistency")
        ex = out / "filter" / "examples.md"
        if ex.is_file():
            b.append(("md", ex.read_text(encoding="utf-8")))
    else:
        b.append(("p", "pending"))

    b.append(("h2", "4. Steered pairs"))
    pa = _load(out / "pairs" / "summary.json")
    if pa:
        c = pa["counts"]
        b.append(
            (
                "table",
                _kv(
                    {
                        "instructions": c["instructions"],
                        "pairs kept": c["pairs"],
                        **{f"dropped: {k}": v for k, v in c["dropped"].items()},
                        "chosen degenerate (before dropping)": c["chosen_degenerate_rate"],
                        "rejected degenerate (before dropping)": c["rejected_degenerate_rate"],
                        **{k: v for k, v in pa["margins"].items() if k != "judge"},
                    }
                ),
            )
        )
        b.append(
            (
                "p",
                f"Judge: {pa['margins'].get('judge', '')}. Settings: `{json.dumps(pa['config'])}`",
            )
        )
        b += _shortcut_blocks(out)
        recs = read_jsonl(out / "pairs" / "pairs.jsonl")[:2]
        for r in recs:
            b.append(
                (
                    "pre",
                    f"[{r['icon2_criterion']}] {r['prompt'][0]['content']}\n\nCHOSEN: "
                    f"{r['chosen'][0]['content'][:400]}\n\nREJECTED: {r['rejected'][0]['content'][:400]}",
                )
            )
    else:
        b.append(("p", "pending"))

    b.append(("h2", "5. DPO"))
    dpo = _load(out / "dpo" / "dpo_summary.json")
    if dpo:
        b.append(
            ("table", _kv({k: v for k, v in dpo.items() if k not in ("settings", "warnings")}))
        )
        for w in dpo.get("warnings", []):
            b.append(("p", f"**Warning:** {w}"))
        b += _figure(out, "dpo", "dpo_curves")
    else:
        b.append(("p", "pending"))

    b.append(("h2", "6. Held-out evaluation"))
    ev = _load(out / "evaluate" / "evaluate.json")
    if ev:
        flat = {}
        for k, v in ev.items():
            if k in ("judge", "per_criterion", "gap_by_direction", "independent"):
                continue
            if isinstance(v, dict):  # statistics with bootstrap intervals
                flat.update({f"{k}: {name}": _interval(x) for name, x in v.items()})
            else:
                flat[k] = v
        b.append(("table", _kv(flat)))
        if ev.get("per_criterion"):
            b.append(
                ("p", "By argmax criterion of the held-out instruction (gap = trained − base):")
            )
            b.append(
                (
                    "table",
                    pd.DataFrame([{"criterion": c, **x} for c, x in ev["per_criterion"].items()]),
                )
            )
        if ev.get("gap_by_direction"):
            b.append(
                (
                    "p",
                    "Every answer judged along every criterion's direction (mean gap, trained − base):",
                )
            )
            b.append(
                (
                    "table",
                    pd.DataFrame(
                        [
                            {"direction": c, "mean gap": _interval(x)}
                            for c, x in ev["gap_by_direction"].items()
                        ]
                    ),
                )
            )
        b.append(("p", f"Judge: {ev.get('judge', '')}."))
        if ev.get("independent"):
            b.append(
                (
                    "p",
                    "Trained against base under judges that read no direction (win rate, 0.5 = no difference):",
                )
            )
            b.append(
                (
                    "table",
                    pd.DataFrame(
                        [
                            {
                                "judge": name,
                                "n": c["n"],
                                "win rate": _interval(c["win_rate"]),
                                "LC win rate": _interval(c["lc_win_rate"]),
                                "ties": _fmt(c["tie_rate"]),
                                "what it reads": c["description"],
                            }
                            for name, c in ev["independent"].items()
                            if "skipped" not in c
                        ]
                    ),
                )
            )
    else:
        b.append(("p", "pending"))

    b.append(("h2", "7. Audit"))
    audit = _load(out / "audit" / "audit.json")
    if audit:
        b.append(("link", ("the audit's report: audit/report.md", "audit/report.md")))
        b.append(
            (
                "md",
                "\n".join(f"- {w}" for w in audit.get("warnings", []))
                or "The audit raised no warning.",
            )
        )
    else:
        b.append(("p", "pending"))
    return b


def _wording_blocks(out: Path, cfg: dict) -> list[Block]:
    """Layers each criterion's wording check flags, and which of them the pairs steer."""
    settings = _load(out / "pairs" / "settings.json") or {}
    rows = []
    for name in cfg.get("extract", {}).get("criteria", []):
        diag = _load(out / "extract" / name / "diagnostics.json") or {}
        flagged = diag.get("summary", {}).get("wording_flagged_layers")
        if flagged is None:
            continue
        steered = settings.get("layers", {}).get(name, [])
        rows.append(
            {
                "criterion": name,
                "layers flagged by the wording check": ", ".join(map(str, flagged)) or "none",
                "flagged and steered by the pairs": ", ".join(
                    str(x) for x in flagged if x in steered
                )
                or ("none" if steered else "(pairs pending)"),
            }
        )
    if not rows:
        return []
    return [
        (
            "p",
            "Concept or wording? A flagged layer is one where the direction orders other wordings of "
            "its prompts below the threshold: it follows the words there, not the criterion.",
        ),
        ("table", pd.DataFrame(rows)),
    ]


def _shortcut_blocks(out: Path) -> list[Block]:
    sc = _load(out / "pairs" / "shortcuts.json")
    if not sc:
        return []
    if "skipped" in sc:
        return [("p", f"Shortcut check skipped: {sc['skipped']}.")]
    top = pd.DataFrame(
        [
            {k: _fmt(f[k]) for k in ("feature", "auc", "strength", "higher_in")}
            for f in sc["features"][:6]
        ]
    )
    gate = _load(out / "pairs" / "gate.json")
    blocks: list[Block] = []
    if gate and "skipped" not in gate:
        before, after = gate.get("before", {}), gate.get("after", {})
        blocks.append(
            (
                "p",
                f"Surface gate: DPO trains on {gate['n_kept']} of {gate['n_in']} pairs "
                f"({gate['n_dropped']} left out: "
                + (", ".join(f"{k} {v}" for k, v in gate["dropped_by_cue"].items()) or "none")
                + f"); strongest single cue {before.get('feature')} {before.get('strength', 0):.2f} "
                f"before, {after.get('feature')} {after.get('strength', 0):.2f} after"
                + ("" if gate.get("complete") else " (the gate stopped at its max_drop)")
                + ". The check below is of the pairs DPO trains on.",
            )
        )
    blocks += [
        (
            "p",
            f"Shortcut check: a bag-of-words classifier tells chosen from rejected with AUC "
            f"{sc['bag_of_words']['auc']:.3f} (cross-validated); apology opener in rejected "
            f"{sc['apology_opener_rate']['rejected']:.2f} vs chosen {sc['apology_opener_rate']['chosen']:.2f}.",
        ),
        ("table", top),
    ]
    for cue in sc.get("shortcuts", []):
        blocks.append(
            (
                "p",
                f"**Warning:** '{cue['feature']}' reaches AUC {cue['strength']:.2f} (higher in "
                f"{cue['higher_in']}); DPO can learn it instead of the criterion.",
            )
        )
    return blocks


def write_report(out: str | Path, *, png: bool = True) -> tuple[Path, Path]:  # noqa: ARG001 - the run's figures exist
    """Write a run's ``report.md`` and ``report.html`` into ``out`` (figures are linked by relative path)."""
    out = Path(out)
    return write_pages(out, build_report(out), f"icon2-lens run {out.name}")


def write_experiment_report(root: str | Path, *, png: bool = True) -> tuple[Path, Path]:
    """``report.md`` / ``report.html`` of an experiment directory, from the files its stages wrote."""
    root = Path(root)
    cfg = _load(root / "config.json") or {}
    costs = _load(root / "costs.json") or {}
    blocks: list[tuple[str, Any]] = [("h1", f"icon2-lens experiment {root.name}")]
    blocks.append(
        (
            "p",
            f"Model {cfg.get('model')}, seed {cfg.get('seed')}; sources "
            f"{', '.join(cfg.get('experiment', {}).get('sources', []))}.",
        )
    )
    ev = _load(root / "eval" / "eval.json")
    blocks.append(("h2", "Results (Table 1 shape): win rate against the base model, %"))
    if ev:
        blocks.append(("table", results_table(ev)))
        blocks.append(
            (
                "p",
                f"n = {ev['n']} held-out instructions ({ev['n_harmful']} harmful); the refusal judge "
                f"is read on the harmful ones only. Win rates count ties as half; 95 % bootstrap "
                "intervals; LC = length-controlled.",
            )
        )
        blocks.append(
            (
                "table",
                pd.DataFrame([{"judge": k, "what it is": v} for k, v in ev["judges"].items()]),
            )
        )
    else:
        blocks.append(("p", "pending"))
    second = _load(root / "eval" / "synthetic" / "eval.json")
    if second:
        blocks.append(("h2", f"Second held-out set: win rate against {second['reference']}, %"))
        blocks.append(("table", results_table(second)))
        blocks.append(
            (
                "p",
                f"n = {second['n']} self-synthesized instructions that no pair source was given "
                "(eval/synthetic/instructions.jsonl); rows compare each system with "
                f"{second['reference']} (below 50: {second['reference']} is preferred). Ties half; 95 % "
                "bootstrap intervals.",
            )
        )
    made = {}
    for source in cfg.get("experiment", {}).get("sources", []):
        summary = _load(root / "pairs" / source / "summary.json")
        if summary:
            made[source] = summary["counts"]["pairs"]
    blocks.append(("h2", "Cost (Table 4 shape): data construction per kept pair"))
    if made:
        blocks.append(("table", cost_table(costs, made)))
        syn = costs.get("common/synthesize", {})
        blocks.append(
            (
                "p",
                f"Instruction synthesis (common to every source, not charged): "
                f"{syn.get('seconds', 0):.0f} s, {syn.get('forward_tokens', 0)} forward tokens.",
            )
        )
    else:
        blocks.append(("p", "pending"))
    curves = reward_curves(root)
    blocks.append(("h2", "DPO reward curves per source (App. I)"))
    if curves:
        write_figures_or_warn(
            {"reward_curves": plot_reward_accuracy(curves)}, root / "figures", png=png
        )
        for ext in ("png", "html"):
            if (root / "figures" / f"reward_curves.{ext}").is_file():
                blocks.append(
                    (
                        "img" if ext == "png" else "link",
                        "figures/reward_curves.png"
                        if ext == "png"
                        else ("interactive", "figures/reward_curves.html"),
                    )
                )
        rule = SaturationRule()
        blocks.append(("table", saturation_steps(curves, rule)))
        blocks.append(
            (
                "p",
                f"Saturation rule (the same as in each DPO log): reward accuracy averaged over "
                f"{rule.window} logged steps reaching {rule.threshold}; 'saturated early' when that "
                f"happens in the first {rule.early_fraction:.0%} of training.",
            )
        )
    else:
        blocks.append(("p", "pending"))
    pair_rows = []
    for source in made:
        summary = _load(root / "pairs" / source / "summary.json")
        pair_rows.append(
            {
                "source": source,
                **{k: v for k, v in summary["counts"].items() if k != "dropped"},
                "dropped": json.dumps(summary["counts"].get("dropped", {})),
            }
        )
    if pair_rows:
        blocks.append(("h2", "Pairs per source"))
        blocks.append(("table", pd.DataFrame(pair_rows)))
    return write_pages(root, blocks, f"icon2-lens experiment {root.name}")
