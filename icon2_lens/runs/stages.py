"""The stages of a run, each writing into its own folder and marking itself finished last.

Shared by :mod:`icon2_lens.runs.pipeline` and :mod:`icon2_lens.runs.experiment`. A stage whose
marker file exists is finished: its results are read back instead of recomputed. Unfinished
stages resume from what they wrote (extraction per criterion, synthesis per batch of samples,
pairs per batch of instructions).
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from icon2_lens._files import read_jsonl, read_marker, write_json, write_jsonl
from icon2_lens._types import LensModel
from icon2_lens.audit.config import AuditConfig
from icon2_lens.audit.run import ShortcutError, run_audit
from icon2_lens.audit.shortcuts import shortcut_report
from icon2_lens.consistency.filter import FilterConfig, KeptInstruction, run_filter
from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.extract import ExtractConfig, run_extraction
from icon2_lens.directions.folder import load_extraction
from icon2_lens.directions.set import DirectionSet
from icon2_lens.dpo.settings import DPOSettings
from icon2_lens.dpo.train import train_dpo
from icon2_lens.instructions.builtin import load_instructions
from icon2_lens.instructions.synthesize import (
    SynthesisConfig,
    synthesize_instructions,
    write_synthesis,
)
from icon2_lens.judge.compare import compare_systems
from icon2_lens.judge.registry import make_judge
from icon2_lens.judge.rules import degeneracy
from icon2_lens.judge.stats import paired_summary
from icon2_lens.model.chat import render_chat
from icon2_lens.model.generate import Decoding, generate
from icon2_lens.model.hooks import normalize_layers
from icon2_lens.model.load import load_model
from icon2_lens.model.read import read_responses
from icon2_lens.pairs.gate import training_pairs
from icon2_lens.pairs.icon2 import PairConfig, generate_pairs
from icon2_lens.pairs.margins import pair_margins

from .config import HeldoutEvalConfig

__all__ = [
    "stage_extract",
    "stage_synthesize",
    "stage_filter",
    "stage_pairs",
    "stage_dpo",
    "stage_evaluate",
    "stage_shortcuts",
    "stage_audit",
    "wording_overlap",
]

log = logging.getLogger(__name__)


def stage_extract(model: LensModel, config: ExtractConfig, out: Path, *, progress: bool = True):
    """Directions of every criterion of ``config`` and their recommended intervals."""
    run_extraction(model, config=config, out=out, progress=progress)
    return load_extraction(out, model=model, criteria=list(config.criteria))


def stage_synthesize(
    model: LensModel, config: SynthesisConfig, out: Path, *, progress: bool = True
) -> list[str]:
    """Self-synthesized, cleaned instructions (``raw.jsonl``, ``instructions.jsonl``, ``synthesis.json``)."""
    marker = out / "synthesis.json"
    if (done := read_marker(marker)) is not None:
        return [r["instruction"] for r in read_jsonl(out / "instructions.jsonl")] if done else []
    out.mkdir(parents=True, exist_ok=True)
    raw, report = synthesize_instructions(
        model, config, raw_path=out / "raw.jsonl", progress=progress
    )
    if not report.kept:
        raise RuntimeError(
            f"no synthesized instruction survived cleaning ({report.counts}); raise synthesize.n"
        )
    write_synthesis(
        report, config, len(raw), instructions=out / "instructions.jsonl", summary=marker
    )
    return list(report.kept)


def stage_filter(
    model: LensModel,
    config: FilterConfig,
    instructions: list[str],
    sets,
    intervals,
    out: Path,
    *,
    progress: bool = True,
    png: bool = True,
) -> list[KeptInstruction]:
    """The instructions kept by the consistency filter (see :mod:`icon2_lens.consistency.filter`)."""
    return run_filter(model, instructions, sets, intervals, config, out, progress=progress, png=png)


def stage_pairs(
    model: LensModel, config: PairConfig, kept, sets, intervals, out: Path, *, progress: bool = True
):
    """Steered pairs and their summary (counts, margins under the unsteered model, settings).

    Returns the pairs DPO trains on: with ``config.surface_gate`` the gated ``train.jsonl``
    (:mod:`icon2_lens.pairs.gate`), else every pair.
    """
    marker = out / "summary.json"
    if (summary := read_marker(marker)) is not None:
        records = read_jsonl(out / "pairs.jsonl")
    else:
        res = generate_pairs(
            model, kept, sets, config, intervals=intervals, out=out, progress=progress
        )
        records = res.records
        summary = {
            "counts": res.counts,
            "margins": pair_margins(model, records, sets, progress=progress),
            "config": config.settings(),
        }
        write_json(summary, marker)
    return training_pairs(records, config, out), summary


def stage_shortcuts(records: Sequence[dict], config: AuditConfig, out: Path) -> dict[str, Any]:
    """The shortcut check of the pairs (``<pairs>/shortcuts.json``), run before DPO trains on them.

    A cue at or above ``config.shortcut_threshold`` is logged as a warning, or raises a
    :class:`~icon2_lens.audit.run.ShortcutError` with ``config.shortcut_error`` (after the
    report is written, so the evidence is on disk). Too few pairs to check is recorded, not fatal.
    """
    path = out / "shortcuts.json"
    report = read_marker(path)
    if report is None:
        try:
            report = shortcut_report(
                records, folds=config.folds, seed=config.seed, threshold=config.shortcut_threshold
            )
        except ValueError as e:
            report = {"skipped": str(e), "shortcuts": []}
            log.warning("shortcut check skipped: %s", e)
        write_json(report, path)
    cues = report.get("shortcuts", [])
    for cue in cues:
        log.warning(
            "pairs: %r tells chosen from rejected with AUC %.2f (higher in %s); DPO can learn it "
            "instead of the criterion",
            cue["feature"],
            cue["strength"],
            cue["higher_in"],
        )
    if cues and config.shortcut_error:
        raise ShortcutError(
            f"the pairs in {out} carry surface shortcuts ("
            + ", ".join(f"{c['feature']} {c['strength']:.2f}" for c in cues)
            + '); orthogonalise the directions (pairs.orthogonalize = ["apology", "length"]) or '
            "turn audit.shortcut_error off"
        )
    return report


def wording_overlap(extract_dir: Path, layers: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Per criterion, the steered layers the extraction's wording check flagged."""
    out = {}
    for name, steered in layers.items():
        diag = read_marker(extract_dir / name / "diagnostics.json") or {}
        flagged = set(diag.get("summary", {}).get("wording_flagged_layers", []))
        hit = sorted(flagged & set(steered))
        if hit:
            out[name] = hit
    return out


def stage_audit(
    model: LensModel,
    trained_dir: str | None,
    config: AuditConfig,
    sets: Mapping[str, DirectionSet],
    intervals,
    pairs_path: Path | None,
    out: Path,
    *,
    progress: bool = True,
    png: bool = True,
) -> dict[str, Any]:
    """The full audit into ``out`` (``audit.json`` marks it finished)."""
    if (done := read_marker(out / "audit.json")) is not None:
        return done
    trained = load_model(trained_dir) if trained_dir else None
    checked = read_marker(pairs_path.parent / "shortcuts.json") if pairs_path is not None else None
    usable = pairs_path is not None and pairs_path.is_file() and "skipped" not in (checked or {})
    try:
        return run_audit(
            model,
            sets,
            config=config,
            pairs=pairs_path if usable else None,
            trained=trained,
            intervals=intervals,
            out=out,
            png=png,
            progress=progress,
        )
    finally:
        del trained


def stage_dpo(
    settings: DPOSettings,
    model_dir: str,
    pairs: list[dict[str, Any]],
    out: Path,
    *,
    png: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Train with DPO; the summary (``dpo_summary.json``) of a finished stage is read back."""
    marker = out / "dpo_summary.json"
    if (done := read_marker(marker)) is not None:
        return done
    if not pairs:
        raise RuntimeError("no pairs to train on")
    with torch.enable_grad():
        res = train_dpo(model_dir, pairs, out, settings=settings, png=png)
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
    if source is not None:
        summary["source"] = source
    del res
    write_json(summary, marker)
    return summary


def _control_layers(
    pairs: PairConfig,
    sets: Mapping[str, DirectionSet],
    intervals: Mapping[str, Sequence[int]],
    n_layers: int,
) -> dict[str, list[int]]:
    if pairs.layers is not None:
        return {c: normalize_layers(list(pairs.layers), n_layers) for c in sets}
    return {c: list(intervals[c]) for c in sets}


def _independent_judgements(base, config, held, trained, reference) -> dict[str, Any]:
    """Trained against base under each judge of ``config.judges`` (none reads a direction)."""
    out = {}
    for name in config.judges:
        try:
            judge = make_judge(name, base)
            comparison = compare_systems(judge, held, trained, reference, seed=config.seed)
        except ValueError as e:  # labels the tokenizer lacks, every answer empty, ...
            out[name] = {"judge": name, "skipped": str(e)}
            log.warning("evaluate: %s skipped: %s", name, e)
            continue
        out[name] = comparison.to_dict()
        log.info("evaluate: trained vs base under %s: %s", name, comparison)
    return out


def stage_evaluate(
    base: LensModel,
    trained_dir: str,
    config: HeldoutEvalConfig,
    filter_config: FilterConfig,
    pairs: PairConfig,
    sets,
    intervals,
    out: Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Held-out instructions answered (greedy, unsteered) by the base and the trained model, both judged
    by the base model along each instruction's argmax criterion direction; paired bootstrap intervals."""
    marker = out / "evaluate.json"
    if (done := read_marker(marker)) is not None:
        return done
    held = load_instructions("heldout")[-config.n_heldout :]
    scores = score_consistency(
        base,
        held,
        list(sets.values()),
        scoring=filter_config.scoring,
        layers=filter_config.layers,
        control_layers=intervals,
        wrap=filter_config.wrap,
        backend=filter_config.backend,
        progress=False,
    )
    crit = scores.best_criterion
    lay_of = _control_layers(pairs, sets, intervals, base.cfg.n_layers)
    decoding = Decoding(max_new_tokens=config.max_new_tokens)
    prompts = [render_chat(base.tokenizer, d) for d in held]
    base_out = generate(base, prompts, decoding, batch_size=config.batch_size, progress=progress)
    trained = load_model(trained_dir)
    trained_out = generate(
        trained, prompts, decoding, batch_size=config.batch_size, progress=progress
    )
    del trained
    # one forward per answer; every criterion's direction is then read off the same residuals
    need = sorted({x for lay in lay_of.values() for x in lay})
    site = next(iter(sets.values())).site
    ra = read_responses(base, held, [g.text for g in trained_out], layers=need, site=site)
    rb = read_responses(base, held, [g.text for g in base_out], layers=need, site=site)
    pa = {c: ra.project(sets[c], layers=lay_of[c]) for c in sets}
    pb = {c: rb.project(sets[c], layers=lay_of[c]) for c in sets}
    proj_a = torch.stack([pa[c][i] for i, c in enumerate(crit)])
    proj_b = torch.stack([pb[c][i] for i, c in enumerate(crit)])
    gap = proj_a - proj_b
    changed = [t.text != s.text for t, s in zip(trained_out, base_out)]
    # every held-out answer judged along every criterion: which directions did training move?
    by_direction = {
        c: paired_summary(pa[c].numpy(), pb[c].numpy(), seed=config.seed)["mean_gap"] for c in sets
    }

    def bad(gens) -> float:
        return sum(degeneracy(g.text, g.token_ids) is not None for g in gens) / len(gens)

    per_criterion = {}
    for c in sorted(set(crit)):
        idx = [i for i, x in enumerate(crit) if x == c]
        per_criterion[c] = {
            "n": len(idx),
            "mean_gap": float(gap[idx].mean()),
            "trained_above_base": float((gap[idx] > 0).float().mean()),
        }
    result = {
        "n": len(held),
        "trained_vs_base": paired_summary(proj_a.numpy(), proj_b.numpy(), seed=config.seed),
        "mean_projection_trained": float(proj_a.mean()),
        "mean_projection_base": float(proj_b.mean()),
        "nll_trained_answers": float(ra.nll.nanmean()),
        "nll_base_answers": float(rb.nll.nanmean()),
        "tokens_trained": float(ra.n_tokens.mean()),
        "tokens_base": float(rb.n_tokens.mean()),
        "degenerate_trained": bad(trained_out),
        "degenerate_base": bad(base_out),
        "answers_changed": sum(changed) / len(changed),
        "per_criterion": per_criterion,
        "gap_by_direction": by_direction,
        "judge": "base model: projection of the answer's residual stream (mean over its tokens) on the "
        "instruction's argmax-criterion direction, averaged over the control layers; win rate counts "
        "ties as half; 95 % paired bootstrap intervals",
        "independent": _independent_judgements(
            base, config, held, [g.text for g in trained_out], [g.text for g in base_out]
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out / "answers.jsonl",
        [
            {"instruction": d, "criterion": c, "base": s.text, "trained": t.text, "gap": float(g)}
            for d, c, s, t, g in zip(held, crit, base_out, trained_out, gap)
        ],
    )
    write_json(result, marker)
    return result
