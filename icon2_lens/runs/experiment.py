"""The comparison experiment: Icon² against baseline pair sources and AlignEZ, on one model.

``icon2-lens experiment --config configs/experiment-small.toml --out runs/NAME``:

1. **Shared inputs.** Directions are extracted, instructions self-synthesized (common to every
   source, so excluded from the per-pair cost) and scored by inherent consistency.
2. **Pairs per source** (:data:`icon2_lens.pairs.baselines.SOURCES`), each given the same number of
   instructions: ``icon2`` and the ``sp`` / ``sampling_ranking`` / ``self_rewarding``
   baselines the top-consistency ones, ``icon2_unfiltered`` a seeded random sample of the pool.
   Every source's pairs are then cut to the same count (the smallest any source produced, at most
   ``experiment.n_pairs``).
3. **DPO** from the same base model with identical settings, once per source.
4. **AlignEZ** fitted on the kept instructions (no training), as an inference-time system.
5. **Evaluation** on the shipped held-out set (benign and harmful requests): every trained model
   and AlignEZ against the base, per judge (win rate and length-controlled win rate with
   bootstrap 95 % intervals; every judge is the base model or a transparent rule). With
   ``eval.n_synthetic``, again on that many synthesized instructions no source was given
   (:func:`synthetic_heldout`, in ``eval/synthetic/``), against ``eval.synthetic_reference``.
6. **Report**: a results table shaped like the Icon² paper's Table 1, a cost table shaped like
   its Table 4 (wall clock and forward tokens per stage, per kept pair), the DPO reward-accuracy
   curves of every source (App. I), ``report.md`` and ``report.html``.

Every stage writes into its own folder under the run directory and is skipped when finished, so
an interrupted experiment resumes. Costs are metered stage by stage (:mod:`icon2_lens.model.cost`) and
kept in ``costs.json``; a resumed stage adds the time of its new work only.
"""

import logging
import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

from icon2_lens._config import narrow
from icon2_lens._files import read_jsonl, read_marker, write_json, write_jsonl
from icon2_lens._types import LensModel
from icon2_lens.alignez.config import AlignEZConfig
from icon2_lens.alignez.fit import fit_alignez
from icon2_lens.consistency.filter import KeptInstruction
from icon2_lens.directions.criteria import get_criteria
from icon2_lens.evaluate.judging import builtin_eval_records, evaluate_systems
from icon2_lens.evaluate.systems import SystemSpec
from icon2_lens.judge.registry import make_judge
from icon2_lens.model.cost import CostMeter
from icon2_lens.model.generate import Decoding
from icon2_lens.model.hooks import normalize_layers
from icon2_lens.model.load import load_model, model_source
from icon2_lens.pairs.baselines import make_pairs, sample_unfiltered
from icon2_lens.pairs.common import BaselineConfig
from icon2_lens.pairs.gate import training_pairs

from .config import ExperimentConfig, check_run_dir
from .report import write_experiment_report
from .stages import stage_dpo, stage_extract, stage_filter, stage_synthesize

__all__ = ["run_experiment", "load_experiment_config", "synthetic_heldout", "draw_unused"]

log = logging.getLogger(__name__)


def load_experiment_config(path: str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """The experiment configuration: the defaults, updated from a TOML file, then ``overrides``.

    Raises:
        ConfigError: Unknown keys, sources or judges, or no pairs to make.
    """
    return ExperimentConfig.from_toml(path, **overrides)


class _Costs:
    """A :class:`CostMeter` persisted to ``costs.json`` after every stage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meter = CostMeter.from_dict(read_marker(path) or {})

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


def _pool(out: Path, instructions: list[str]) -> list[KeptInstruction]:
    """Every synthesized instruction with its argmax criterion and consistency (from the filter)."""
    rows = read_jsonl(out / "filter" / "scores.jsonl")
    if len(rows) != len(instructions):
        raise RuntimeError(
            f"{out / 'filter' / 'scores.jsonl'} does not match the synthesized instructions"
        )
    return [
        KeptInstruction(i, r["instruction"], r["criterion"], float(r["consistency"]))
        for i, r in enumerate(rows)
    ]


def _judge_layers(cfg: ExperimentConfig, model: LensModel, intervals):
    """The inherent judge reads the layers the pairs are steered on (each criterion's interval when
    ``pairs.layers = "criterion"``)."""
    layers = cfg.pairs.layers
    return intervals if layers is None else normalize_layers(list(layers), model.cfg.n_layers)


def _stage_pairs(
    source: str,
    model,
    cfg: ExperimentConfig,
    kept,
    pool,
    sets,
    intervals,
    costs: _Costs,
    out: Path,
    progress: bool,
):
    marker = out / "summary.json"
    if (done := read_marker(marker)) is not None:
        return training_pairs(read_jsonl(out / "pairs.jsonl"), cfg.pairs, out), done
    n = min(cfg.experiment.n_instructions, len(kept))  # the same count for every source
    judge = None
    if source == "sampling_ranking":
        judge = _MeteredJudge(
            make_judge(
                cfg.baselines.ranking_judge,
                model,
                direction_sets=sets,
                layers=_judge_layers(cfg, model, intervals),
            ),
            costs,
            f"{source}/judge",
        )
    elif source == "self_rewarding":
        judge = _MeteredJudge(make_judge("self_rating", model), costs, f"{source}/judge")
    items = pool if source == "icon2_unfiltered" else kept[:n]
    with costs.stage(f"{source}/pairs"):
        res = make_pairs(
            source,
            model,
            items,
            direction_sets=sets,
            intervals=intervals,
            criteria=get_criteria(cfg.extract.criteria),
            judge=judge,
            pair_config=cfg.pairs,
            config=narrow(cfg.baselines, BaselineConfig),
            n=n,
            seed=cfg.seed,
            out=out,
            progress=progress,
        )
    costs.save()
    summary = {"source": source, "counts": res.counts, "n_instructions": n}
    write_json(summary, marker)
    # every source goes through the same surface gate, so they train on equally clean pairs
    return training_pairs(res.records, cfg.pairs, out), summary


def _stage_alignez(
    model, cfg: ExperimentConfig, kept, costs: _Costs, out: Path, progress: bool
) -> Path:
    marker = out / "fit.json"
    if read_marker(marker) is not None:
        return out
    config = narrow(cfg.alignez, AlignEZConfig)
    queries = [k.instruction for k in kept[: cfg.alignez.n_queries]]
    with costs.stage("alignez/fit"):
        edit = fit_alignez(model, queries, config, progress=progress, out=out / "fit")
    costs.save()
    edit.save(out)
    write_json({"n_queries": len(queries), "settings": config.settings()}, marker)
    return out


def _stage_eval(
    model,
    cfg: ExperimentConfig,
    sets,
    intervals,
    systems,
    out: Path,
    progress: bool,
    *,
    records: list[dict[str, Any]],
    judges: tuple[str, ...],
    reference: str,
) -> dict[str, Any]:
    marker = out / "eval.json"
    if (done := read_marker(marker)) is not None:
        return done
    ev = cfg.eval
    return evaluate_systems(
        model,
        systems,
        records,
        [
            make_judge(
                name, model, direction_sets=sets, layers=_judge_layers(cfg, model, intervals)
            )
            for name in judges
        ],
        out=out,
        decoding=Decoding(max_new_tokens=ev.max_new_tokens),
        reference=reference,
        batch_size=ev.batch_size,
        seed=ev.seed,
        progress=progress,
    )


def synthetic_heldout(
    cfg: ExperimentConfig, kept: list[KeptInstruction], pool: list[KeptInstruction]
) -> list[dict[str, Any]]:
    """``eval.n_synthetic`` clean synthesized instructions that no pair source was given.

    Excluded: the top-consistency instructions the sources were given, the random pool sample of
    ``icon2_unfiltered`` when it runs, the instructions AlignEZ is fitted on when it runs, any
    text equal to one of those or to a shipped evaluation request, and repeated texts. The rest
    are drawn at random with the eval seed and kept in pool order. Records are ``{"instruction", "kind": "benign", "index"}`` (the pool index).
    """
    n = min(cfg.experiment.n_instructions, len(kept))
    given = {k.index for k in kept[:n]}
    if "icon2_unfiltered" in cfg.experiment.sources:
        given |= {k.index for k in sample_unfiltered(pool, n, cfg.seed)}
    if cfg.experiment.alignez:  # fitted on the first n_queries kept instructions
        given |= {k.index for k in kept[: cfg.alignez.n_queries]}
    taken = {k.instruction for k in pool if k.index in given}
    taken |= {r["instruction"] for r in builtin_eval_records()}
    want = cfg.eval.n_synthetic
    records, eligible = draw_unused(pool, want, cfg.eval.seed, indices=given, texts=taken)
    if eligible < want:
        log.warning(
            "only %d synthesized instructions were given to no source, fewer than "
            "eval.n_synthetic=%d: judging on all of them",
            eligible,
            want,
        )
    return records


def draw_unused(
    pool: Sequence[KeptInstruction],
    n: int,
    seed: int,
    *,
    indices: Collection[int] = (),
    texts: Collection[str] = (),
) -> tuple[list[dict[str, Any]], int]:
    """``n`` pool instructions drawn at random, none excluded by index or text, none repeated.

    Returns the records ``{"instruction", "kind": "benign", "index"}`` in pool order and how many
    instructions were eligible (``n`` is capped there).

    Example:
        >>> pool = [KeptInstruction(i, t, "general") for i, t in enumerate("abcab")]
        >>> draw_unused(pool, 5, 0, indices={0}, texts={"c"})
        ([{'instruction': 'b', 'kind': 'benign', 'index': 1}, {'instruction': 'a', 'kind': 'benign', 'index': 3}], 2)
    """
    indices, taken = set(indices), set(texts)
    candidates: list[KeptInstruction] = []
    for item in pool:
        if item.index in indices or item.instruction in taken:
            continue
        taken.add(item.instruction)
        candidates.append(item)
    picked = sorted(random.Random(seed).sample(range(len(candidates)), min(n, len(candidates))))
    records = [
        {"instruction": candidates[i].instruction, "kind": "benign", "index": candidates[i].index}
        for i in picked
    ]
    return records, len(candidates)


def run_experiment(
    cfg: ExperimentConfig, out: str | Path, *, progress: bool = True, png: bool = True
) -> dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg`` into ``out``; returns the evaluation."""
    out = Path(out)
    check_run_dir(out, cfg, record=False)  # refuse another experiment's folder before loading
    costs = _Costs(out / "costs.json")
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model)
    cfg.check_model(int(model.cfg.n_layers))
    check_run_dir(out, cfg)
    base_dir = model_source(model)
    ex = cfg.experiment
    with torch.no_grad():
        with costs.stage("icon2/extract"):
            sets, intervals = stage_extract(model, cfg.extract, out / "extract", progress=progress)
        costs.save()
        with costs.stage("common/synthesize"):
            instructions = stage_synthesize(
                model, cfg.synthesize, out / "synthesize", progress=progress
            )
        costs.save()
        with costs.stage("icon2/filter"):
            kept = stage_filter(
                model,
                cfg.filter,
                instructions,
                sets,
                intervals,
                out / "filter",
                progress=progress,
                png=png,
            )
        costs.save()
        if len(kept) < ex.n_instructions:
            log.warning(
                "only %d instructions kept, fewer than experiment.n_instructions=%d",
                len(kept),
                ex.n_instructions,
            )
        pool = _pool(out, instructions)
        heldout = synthetic_heldout(cfg, kept, pool) if cfg.eval.n_synthetic else []
        if cfg.eval.n_synthetic and not heldout:
            raise RuntimeError(
                f"eval.n_synthetic = {cfg.eval.n_synthetic}, but every clean synthesized "
                "instruction goes to a pair source: raise synthesize.n or set eval.n_synthetic = 0"
            )
        pairs = {}
        for source in ex.sources:
            records, _ = _stage_pairs(
                source,
                model,
                cfg,
                kept,
                pool,
                sets,
                intervals,
                costs,
                out / "pairs" / source,
                progress,
            )
            pairs[source] = records
    n_train = min(ex.n_pairs, *(len(r) for r in pairs.values()))
    if n_train < 1:
        empty = [s for s, r in pairs.items() if not r]
        raise RuntimeError(f"no pairs from {empty}: raise experiment.n_instructions")
    if n_train < ex.n_pairs:
        log.warning("every source trains on %d pairs (fewest any source made)", n_train)
    for source in ex.sources:
        with costs.stage(f"{source}/dpo"):
            stage_dpo(
                cfg.dpo,
                base_dir,
                pairs[source][:n_train],
                out / "dpo" / source,
                png=png,
                source=source,
            )
        costs.save()
    systems = [SystemSpec("base", "base")]
    systems += [
        SystemSpec(source, "model", str(out / "dpo" / source / "model")) for source in ex.sources
    ]
    with torch.no_grad():
        if ex.alignez:
            edit_dir = _stage_alignez(model, cfg, kept, costs, out / "alignez", progress)
            systems.append(SystemSpec("alignez", "alignez", str(edit_dir), cfg.alignez.strength))
        ev = cfg.eval
        result = _stage_eval(
            model,
            cfg,
            sets,
            intervals,
            systems,
            out / "eval",
            progress,
            records=builtin_eval_records(ev.n_benign, ev.n_harmful),
            judges=ev.judges,
            reference=ev.reference,
        )
        if heldout:
            if read_marker(out / "eval" / "synthetic" / "eval.json") is None:
                write_jsonl(out / "eval" / "synthetic" / "instructions.jsonl", heldout)
            with costs.stage("eval/synthetic"):
                _stage_eval(
                    model,
                    cfg,
                    sets,
                    intervals,
                    systems,
                    out / "eval" / "synthetic",
                    progress,
                    records=heldout,
                    judges=ev.judges_on_synthetic(),
                    reference=ev.synthetic_reference,
                )
            costs.save()
    write_json({"n_train_pairs": n_train}, out / "experiment.json")
    write_experiment_report(out, png=png)
    return result
