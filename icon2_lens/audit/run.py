"""The audit end to end: every section, written as it finishes, then ``audit.json`` and the report.

Layout of an audit folder::

    settings.json          what the audit was run on and with (a re-run must match it)
    sections/<name>.json   one file per finished section (lens, stereotype, …): resumes skip them
    audit.json             settings, headline numbers per criterion, warnings and every section
    report.md, report.html the same, for reading; figures/ (HTML + PNG)

Example:
    >>> import tempfile, torch
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.directions.set import DirectionSet
    >>> model = tiny_model()
    >>> ds = DirectionSet(criterion="toy", layers=(0, 1, 2), vectors=torch.eye(3, 16), method="mean_diff",
    ...                   stats=tuple({"mean_resid_norm": 4.0} for _ in range(3)))
    >>> res = run_audit(model, {"toy": ds}, config=AuditConfig(sections=("lens", "confounds")), progress=False)
    >>> sorted(res["sections"])
    ['confounds', 'lens']
"""

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from icon2_lens._cache import file_sha256
from icon2_lens._files import check_settings, read_json, read_marker, write_json
from icon2_lens._types import LensModel
from icon2_lens.directions.confounds import fit_confounds
from icon2_lens.directions.contrast import contrast_activations
from icon2_lens.directions.criteria import BUILTIN_CRITERIA, Criterion
from icon2_lens.directions.set import DirectionSet, check_compatible, direction_set_id
from icon2_lens.directions.steer import SteeringSpec, steer
from icon2_lens.directions.wording import (
    builtin_wordings,
    load_wordings_file,
    pooled_generalisation,
    wording_accuracy,
    wording_activations,
    wording_summary,
)
from icon2_lens.instructions.builtin import load_instructions
from icon2_lens.judge.stats import bootstrap_ci
from icon2_lens.model.load import model_fingerprint
from icon2_lens.pairs.records import read_pairs

from .config import AuditConfig
from .confounds import confound_cosines, largest_confounds, subspace_shares
from .data import MinimalPair, load_minimal_pairs
from .lens import logit_lens, steering_shift
from .likelihood import likelihood_report
from .report import headline, write_audit
from .shift import prompt_activations, shift_table
from .shortcuts import shortcut_report
from .stereotype import projection_gaps, sentence_activations, stereotype_score

__all__ = ["run_audit", "steered_layers", "ShortcutError"]

logger = logging.getLogger(__name__)


class ShortcutError(ValueError):
    """A pair set's surface cue reached the threshold and the audit was told to fail on it."""


def steered_layers(
    sets: Mapping[str, DirectionSet],
    config: AuditConfig,
    *,
    pair_settings: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Sequence[int]] | None = None,
    n_layers: int,
) -> dict[str, list[int]]:
    """Per criterion, the layers the behavioural tests steer (see :attr:`AuditConfig.layers`)."""
    recorded = (pair_settings or {}).get("layers") or {}
    out = {}
    for name, ds in sets.items():
        if config.layers is not None:
            layers = [x + n_layers if x < 0 else x for x in config.layers]
        elif name in recorded:
            layers = list(recorded[name])
        elif intervals and name in intervals:
            layers = list(intervals[name])
        else:
            third = max(1, round(n_layers / 3))
            start = (n_layers - third) // 2
            layers = list(range(start, start + third))
        missing = [x for x in layers if x not in ds.layers]
        if missing or not layers:
            raise ValueError(
                f"audit layers {missing or layers} are not in the {name!r} direction set (it holds "
                f"{ds.layers[0]}..{ds.layers[-1]}); pass layers inside it"
            )
        out[name] = sorted(layers)
    return out


class _Audit:
    """State shared by the sections of one audit."""

    def __init__(self, model, sets, config, layers, records, trained, progress):
        self.model = model
        self.sets = sets
        self.config = config
        self.layers = layers
        self.records = records
        self.trained = trained
        self.progress = progress
        self._heldout: list[str] | None = None

    @property
    def heldout(self) -> list[str]:
        if self._heldout is None:
            self._heldout = load_instructions("heldout")
        return self._heldout

    # ---- sections -------------------------------------------------------------------------
    def lens(self) -> dict:
        cfg = self.config
        tables, shifts = [], {}
        for name, ds in self.sets.items():
            tables.append(logit_lens(self.model, ds, k=cfg.top_k))
            shifts[name] = steering_shift(
                self.model,
                ds,
                self.heldout[: cfg.n_prompts],
                layers=self.layers[name],
                gammas=[cfg.gamma_pos, cfg.gamma_neg],
                unit=cfg.unit,
                k=cfg.top_k,
                batch_size=cfg.batch_size,
            )
        return {"logit_lens": pd.concat(tables).to_dict(orient="records"), "steering_shift": shifts}

    def _pairs(self) -> dict[str, list[MinimalPair]]:
        return {
            d: self._sample(load_minimal_pairs(d), d, self.config.max_pairs)
            for d in self.config.domains
        }

    def _sample(self, pairs: list[MinimalPair], domain: str, m: int | None) -> list[MinimalPair]:
        if m is None or len(pairs) <= m:
            return pairs
        rng = random.Random(f"{self.config.seed}:{domain}")
        return [pairs[i] for i in sorted(rng.sample(range(len(pairs)), m))]

    def stereotype(self) -> dict:
        cfg, model = self.config, self.model
        data = self._pairs()
        gaps, steered, scores = [], [], []
        by_layers: dict[tuple, dict] = {}
        for domain, pairs in data.items():
            for ds in self.sets.values():
                key = (ds.layers, ds.site)
                if key not in by_layers:
                    by_layers[key] = {}
                if domain not in by_layers[key]:
                    acts = sentence_activations(
                        model,
                        [p.more for p in pairs] + [p.less for p in pairs],
                        layers=list(ds.layers),
                        site=ds.site,
                        batch_size=2 * cfg.batch_size,
                        progress=self.progress,
                    )
                    by_layers[key][domain] = (acts[: len(pairs)], acts[len(pairs) :])
                more, less = by_layers[key][domain]
                table = projection_gaps(
                    ds, more, less, domain=domain, n_boot=cfg.n_boot, seed=cfg.seed
                )
                gaps.append(table)
                steered.append(self._steered_gap(ds, more, less, domain))
        conditions = [("base", None, None)]
        for name in self.sets:
            for label, gamma in (("+γ", cfg.gamma_pos), ("−γ", cfg.gamma_neg)):
                conditions.append((f"{name} {label}", name, gamma))
        jobs = [(d, c) for d in data for c in conditions]
        bar = tqdm(
            total=len(jobs), desc="stereotype scores", disable=not self.progress, leave=False
        )
        for domain, pairs in data.items():
            sample = self._sample(pairs, domain, cfg.max_score_pairs)
            for label, name, gamma in conditions:
                bar.update()
                s = self._score(model, sample, name, gamma)
                scores.append(
                    {
                        "domain": domain,
                        "condition": label,
                        "criterion": name or "",
                        "gamma": gamma or 0.0,
                        **s,
                    }
                )
            if self.trained is not None:
                s = self._score(self.trained, sample, None, None)
                scores.append(
                    {"domain": domain, "condition": "trained", "criterion": "", "gamma": 0.0, **s}
                )
        return {
            "gaps": pd.concat(gaps).to_dict(orient="records"),
            "steered_gaps": steered,
            "scores": scores,
            "n_pairs": {d: len(p) for d, p in data.items()},
        }

    def _score(self, model, sample, name: str | None, gamma: float | None) -> dict:
        """Stereotype score of ``model`` on ``sample``, steered along ``name`` by ``gamma`` if given."""
        cfg = self.config
        kw = dict(batch_size=2 * cfg.batch_size, n_boot=cfg.n_boot, seed=cfg.seed)
        if name is None:
            return stereotype_score(model, sample, **kw)
        spec = SteeringSpec(
            directions=self.sets[name], gamma=gamma, layers=self.layers[name], unit=cfg.unit
        )
        with steer(model, spec):
            return stereotype_score(model, sample, **kw)

    def _steered_gap(self, ds: DirectionSet, more, less, domain: str) -> dict:
        """The gap in SDs averaged over the steered layers, per pair, with a bootstrap interval."""
        idx = [ds.index(x) for x in self.layers[ds.criterion]]
        p_more, p_less = ds.project(more)[:, idx], ds.project(less)[:, idx]
        sd = torch.cat([p_more, p_less]).double().std(0).clamp(min=1e-12)
        per_pair = ((p_more - p_less).double() / sd).mean(1).numpy()
        ci = bootstrap_ci(per_pair, n_boot=self.config.n_boot, seed=self.config.seed)
        return {
            "criterion": ds.criterion,
            "domain": domain,
            "layers": self.layers[ds.criterion],
            "value": ci.value,
            "low": ci.low,
            "high": ci.high,
            "n": ci.n,
        }

    def wording(self) -> dict:
        cfg, model = self.config, self.model
        extra = load_wordings_file(cfg.wordings_file) if cfg.wordings_file else {}
        held = self.heldout[: cfg.n_wording]
        tables, pooled, summaries, skipped = [], [], [], []
        for name, ds in self.sets.items():
            wordings = tuple(builtin_wordings(name)) + tuple(extra.get(name, ()))
            if not wordings:
                skipped.append(name)
                continue
            kw = dict(
                layers=list(ds.layers),
                site=ds.site,
                batch_size=cfg.batch_size,
                progress=self.progress,
            )
            contrasts = wording_activations(model, name, wordings, held, **kw)
            table = wording_accuracy(ds, contrasts)
            tables.append(table)
            s = wording_summary(table, cfg.wording_threshold)
            s.insert(0, "criterion", name)
            summaries.append(s)
            prompts = ds.meta.get("criterion_prompts") or (
                BUILTIN_CRITERIA[name].to_dict() if name in BUILTIN_CRITERIA else None
            )
            if prompts and len(wordings) >= 2 and len(held) >= 4:
                own_c = Criterion(
                    name=name, positive=prompts["positive"], negative=prompts["negative"]
                )
                contrasts["(own)"] = contrast_activations(model, own_c, held, **kw)
                p = pooled_generalisation(
                    contrasts, own="(own)", layers=list(ds.layers), method=ds.method, seed=cfg.seed
                )
                p.insert(0, "criterion", name)
                pooled.append(p)

        def cat(xs):
            return pd.concat(xs).to_dict(orient="records") if xs else []

        return {
            "accuracy": cat(tables),
            "summary": cat(summaries),
            "pooled": cat(pooled),
            "threshold": cfg.wording_threshold,
            "no_wordings": skipped,
            "n_heldout": len(held),
        }

    def confounds(self) -> dict:
        cfg = self.config
        cos, shares = [], []
        for key in {(ds.layers, ds.site) for ds in self.sets.values()}:
            fitted = fit_confounds(
                self.model,
                cfg.confounds,
                layers=list(key[0]),
                site=key[1],
                batch_size=cfg.batch_size,
            )
            group = [ds for ds in self.sets.values() if (ds.layers, ds.site) == key]
            cos.append(confound_cosines(group, fitted))
            shares.append(subspace_shares(group, fitted))
        cos_t = pd.concat(cos)
        return {
            "cosines": cos_t.to_dict(orient="records"),
            "shares": pd.concat(shares).to_dict(orient="records"),
            "largest": largest_confounds(cos_t, self.layers).to_dict(orient="records"),
        }

    def shortcuts(self) -> dict:
        cfg = self.config
        return shortcut_report(
            self.records, folds=cfg.folds, seed=cfg.seed, threshold=cfg.shortcut_threshold
        )

    def likelihood(self) -> dict:
        cfg = self.config
        try:
            return likelihood_report(
                self.model,
                self.records,
                temperature=cfg.sharpening_temperature,
                threshold=cfg.shortcut_threshold,
                batch_size=cfg.batch_size,
                progress=self.progress,
            )
        except ValueError as e:  # recorded, as the run's shortcut check records its skips
            logger.warning("audit section likelihood skipped: %s", e)
            return {"skipped": str(e)}

    def shift(self) -> dict:
        cfg = self.config
        instructions = self.heldout[: cfg.n_shift]
        tables = []
        for key in {(ds.layers, ds.site) for ds in self.sets.values()}:
            kw = dict(
                layers=list(key[0]), site=key[1], batch_size=cfg.batch_size, progress=self.progress
            )
            base = prompt_activations(self.model, instructions, **kw)
            trained = prompt_activations(self.trained, instructions, **kw)
            tables.append(
                shift_table(
                    [ds for ds in self.sets.values() if (ds.layers, ds.site) == key], base, trained
                )
            )
        return {
            "table": pd.concat(tables).to_dict(orient="records"),
            "n_instructions": len(instructions),
        }


def _settings(model, sets, config, layers, pairs_path, trained) -> dict:
    cfg = {k: v for k, v in asdict(config).items() if k not in ("sections", "batch_size")}
    return {
        "format": "icon2-lens audit v1",
        "config": cfg,
        "model_fingerprint": model_fingerprint(model),
        "direction_ids": {n: direction_set_id(ds) for n, ds in sets.items()},
        "layers": layers,
        "pairs": {"path": str(pairs_path), "sha256": file_sha256(pairs_path)}
        if pairs_path
        else None,
        "trained_fingerprint": model_fingerprint(trained) if trained is not None else None,
    }


def run_audit(
    model: LensModel,
    sets: Mapping[str, DirectionSet] | Sequence[DirectionSet],
    *,
    config: AuditConfig | None = None,
    pairs: str | Path | None = None,
    trained: LensModel | None = None,
    intervals: Mapping[str, Sequence[int]] | None = None,
    out: str | Path | None = None,
    figures: bool = True,
    png: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit direction sets (and a pair set, and a trained model) and return everything measured.

    Args:
        model: The base model the directions were extracted from.
        sets: Criterion -> direction set (or a list of sets).
        config: What to measure (:class:`AuditConfig`).
        pairs: A ``pairs.jsonl`` for the shortcut check; a ``settings.json`` beside it tells
            which layers its pairs steered.
        trained: A trained model (e.g. the DPO output) for the stereotype score and the DPO shift.
        intervals: Criterion -> recommended layers (from the extraction), used when neither
            ``config.layers`` nor the pairs say which layers are steered.
        out: Folder to write to (sections as they finish, then ``audit.json`` and the report);
            a finished section with the same settings is read back, different settings raise.
        figures: Write figures.
        png: Also as PNG.
        progress: Show progress bars.

    Raises:
        ValueError: Bad settings, direction sets of another model, a pairs file the shortcut
            check cannot use.
        ShortcutError: ``config.shortcut_error`` and a cue reached the threshold.
    """
    config = config or AuditConfig()
    sets = dict(sets) if isinstance(sets, Mapping) else {ds.criterion: ds for ds in sets}
    if not sets:
        raise ValueError("no direction sets to audit")
    for ds in sets.values():
        check_compatible(ds, model)
    if trained is not None:
        for ds in sets.values():
            check_compatible(ds, trained, check_fingerprint=False)
    records, pair_settings = None, None
    if pairs is not None:
        pairs = Path(pairs)
        records = read_pairs(pairs)
        beside = pairs.parent / "settings.json"
        pair_settings = read_json(beside) if beside.is_file() else None
    layers = steered_layers(
        sets, config, pair_settings=pair_settings, intervals=intervals, n_layers=model.cfg.n_layers
    )
    wanted = [
        s
        for s in config.sections
        if (s not in ("shortcuts", "likelihood") or records is not None)
        and (s != "shift" or trained is not None)
    ]
    for s, need in (("shortcuts", "pairs"), ("likelihood", "pairs"), ("shift", "trained")):
        if s in config.sections and s not in wanted:
            logger.info("audit section %s skipped: no %s given", s, need)
    settings = _settings(model, sets, config, layers, pairs, trained)
    folder = Path(out) if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        check_settings(folder / "settings.json", settings, what="an audit")
    audit = _Audit(model, sets, config, layers, records, trained, progress)
    sections: dict[str, Any] = {}
    for name in wanted:
        path = folder / "sections" / f"{name}.json" if folder is not None else None
        done = read_marker(path) if path is not None else None
        if done is not None:
            logger.info("audit section %s: already in %s, reusing", name, path)
            sections[name] = done
            continue
        logger.info("audit section %s", name)
        sections[name] = getattr(audit, name)()
        if path is not None:
            write_json(sections[name], path)
    head, warnings = headline(sections, layers, config)
    result = {"settings": settings, "headline": head, "warnings": warnings, "sections": sections}
    for w in warnings:
        logger.warning("audit: %s", w)
    if folder is not None:
        write_audit(result, folder, figures=figures, png=png)
    if config.shortcut_error and sections.get("shortcuts", {}).get("shortcuts"):
        cues = ", ".join(
            f"{c['feature']} ({c['strength']:.2f})" for c in sections["shortcuts"]["shortcuts"]
        )
        raise ShortcutError(
            f"the pairs carry surface shortcuts at or above AUC {config.shortcut_threshold}: {cues}; "
            "orthogonalise the directions (--orthogonalize apology,length) or drop shortcut_error"
        )
    return result
