"""Fitting an AlignEZ edit: self-generated pairs, their embeddings, per-layer subspaces, layers, centres."""

import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from icon2_lens._files import append_jsonl, check_settings, read_jsonl
from icon2_lens._types import LensModel
from icon2_lens.judge.rules import degeneracy
from icon2_lens.model.chat import encode_prompts, render_chat
from icon2_lens.model.collect import collect_resid
from icon2_lens.model.generate import Decoding, Generation, generate_rows
from icon2_lens.model.hooks import normalize_layers, resid_hook_name
from icon2_lens.model.load import model_fingerprint
from icon2_lens.model.read import read_responses

from .config import (
    DESCRIBE_HARM,
    DESCRIBE_HELP,
    PAIRS_FILE,
    PAIRS_SETTINGS,
    RESPOND_SYSTEM,
    SITE,
    AlignEZConfig,
)
from .edit import AlignEZEdit
from .subspace import fit_subspace, heldout_separation

__all__ = ["generate_self_pairs", "fit_alignez"]

log = logging.getLogger(__name__)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    return ""


def _generate(
    model: LensModel, prompts: list[str], decoding: Decoding, seeds: list[int], batch_size: int
) -> list[Generation]:
    """Generate in batches with one fixed seed per text, so a text does not depend on its batch."""
    rows = encode_prompts(model.tokenizer, prompts, max_len=getattr(model.cfg, "n_ctx", None))
    out: list[Generation] = []
    for s in range(0, len(rows), batch_size):
        out.extend(
            generate_rows(
                model, rows[s : s + batch_size], decoding, row_seeds=seeds[s : s + batch_size]
            )
        )
    return out


def generate_self_pairs(
    model: LensModel,
    queries: Sequence[str],
    config: AlignEZConfig | None = None,
    *,
    progress: bool = True,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Step 1: per query, a good and a bad description and one answer following each (greedy).

    Args:
        model: The bridge (its tokenizer needs a chat template).
        queries: Fit queries (user instructions).
        config: Budgets and drop rules (:class:`AlignEZConfig`).
        progress: Show a progress bar.
        out: Directory for ``pairs.jsonl`` (one record per query, appended after every batch)
            and ``pairs_settings.json``; a re-run skips the queries already written and refuses
            a directory written with other settings.

    Returns:
        One record per query, in order: ``index``, ``query``, ``help_description``,
        ``harm_description``, ``help_response``, ``harm_response``, token counts and ``dropped``
        (``None``, or why: ``empty_description``, ``help_empty``, ``harm_repetition``,
        ``identical``, ...).

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> cfg = AlignEZConfig(description_tokens=4, response_tokens=4, do_sample=True)
        >>> recs = generate_self_pairs(tiny_model(seed=1), ["tell me a story"], cfg, progress=False)
        >>> sorted(recs[0])[:4]
        ['dropped', 'harm_description', 'harm_response', 'harm_tokens']
    """
    config = config or AlignEZConfig()
    queries = [str(q) for q in queries]
    if not queries or any(not q.strip() for q in queries):
        raise ValueError(
            "AlignEZ needs at least one non-empty fit query (got none, or an empty one)"
        )
    tok = model.tokenizer
    done: dict[int, dict[str, Any]] = {}
    pairs_path = None
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **config._pair_settings(),
            "model_name": str(model.cfg.model_name),
            "model_fingerprint": model_fingerprint(model),
        }
        check_settings(
            out_dir / PAIRS_SETTINGS,
            settings,
            what="AlignEZ pairs",
            fix=f"choose another --out or delete {out_dir / PAIRS_FILE}",
        )
        pairs_path = out_dir / PAIRS_FILE
        for rec in read_jsonl(pairs_path, repair=True):
            i = int(rec["index"])
            if i >= len(queries) or rec["query"] != queries[i]:
                raise ValueError(
                    f"{pairs_path} record {i} is for another query list ({rec['query'][:40]!r}); "
                    "choose another --out or delete the file"
                )
            done[i] = rec
        if done:
            log.info(
                "resuming AlignEZ pairs: %d of %d queries already in %s",
                len(done),
                len(queries),
                pairs_path,
            )
    todo = [i for i in range(len(queries)) if i not in done]
    describe = Decoding(
        max_new_tokens=config.description_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        seed=config.seed,
    )
    respond = Decoding(
        max_new_tokens=config.response_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        seed=config.seed,
    )
    chunks = [todo[s : s + config.batch_size] for s in range(0, len(todo), config.batch_size)]
    for chunk in tqdm(chunks, desc="AlignEZ pairs", disable=not progress, unit="batch"):
        qs = [queries[i] for i in chunk]
        n = len(qs)
        ask = [render_chat(tok, DESCRIBE_HELP.format(query=q)) for q in qs]
        ask += [render_chat(tok, DESCRIBE_HARM.format(query=q)) for q in qs]
        seeds = [4 * i for i in chunk] + [4 * i + 1 for i in chunk]
        descs = [
            _first_line(g.text) for g in _generate(model, ask, describe, seeds, config.batch_size)
        ]
        usable = [j for j in range(n) if descs[j] and descs[n + j]]
        answers: dict[tuple[int, str], Generation] = {}
        if usable:
            prompts = [
                render_chat(tok, qs[j], system=RESPOND_SYSTEM.format(description=descs[j]))
                for j in usable
            ]
            prompts += [
                render_chat(tok, qs[j], system=RESPOND_SYSTEM.format(description=descs[n + j]))
                for j in usable
            ]
            seeds = [4 * chunk[j] + 2 for j in usable] + [4 * chunk[j] + 3 for j in usable]
            gens = _generate(model, prompts, respond, seeds, config.batch_size)
            for a, j in enumerate(usable):
                answers[j, "help"], answers[j, "harm"] = gens[a], gens[len(usable) + a]
        new = []
        for j, i in enumerate(chunk):
            rec: dict[str, Any] = {
                "index": i,
                "query": qs[j],
                "help_description": descs[j],
                "harm_description": descs[n + j],
                "help_response": "",
                "harm_response": "",
                "help_tokens": 0,
                "harm_tokens": 0,
                "dropped": None,
            }
            if j not in usable:
                rec["dropped"] = "empty_description"
            else:
                for side in ("help", "harm"):
                    g = answers[j, side]
                    rec[f"{side}_response"], rec[f"{side}_tokens"] = g.text, len(g.token_ids)
                    why = degeneracy(g.text, g.token_ids, max_repetition=config.max_repetition)
                    if why and rec["dropped"] is None:
                        rec["dropped"] = f"{side}_{why}"
                if (
                    rec["dropped"] is None
                    and answers[j, "help"].token_ids == answers[j, "harm"].token_ids
                ):
                    rec["dropped"] = "identical"
            new.append(rec)
            done[i] = rec
        if pairs_path is not None:
            append_jsonl(pairs_path, new)
    return [done[i] for i in range(len(queries))]


def _pair_similarity(help_emb: Tensor, harm_emb: Tensor, mode: str) -> Tensor:
    """``[n_pairs]`` cosine of the two embeddings of each pair, averaged over layers."""
    a, b = help_emb.double(), harm_emb.double()
    if mode == "centered":
        mean = torch.cat([a, b]).mean(0, keepdim=True)
        a, b = a - mean, b - mean
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    cos = torch.where(den > 0, num / den.clamp(min=1e-300), torch.ones_like(num))
    return cos.mean(-1).float()


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _default_candidates(n_layers: int) -> list[int]:
    q = n_layers // 4
    return list(range(q, n_layers - q)) or list(range(n_layers))


def fit_alignez(
    model: LensModel,
    queries: Sequence[str],
    config: AlignEZConfig | None = None,
    *,
    progress: bool = True,
    out: str | Path | None = None,
) -> AlignEZEdit:
    """Fit an AlignEZ edit from the model's own answers to ``queries`` (steps 1–4 of the module doc).

    Args:
        model: The bridge (never modified).
        queries: Fit queries (user instructions).
        config: Settings (:class:`AlignEZConfig`).
        progress: Show progress bars.
        out: Directory for the self-generated pairs (``pairs.jsonl``, resumable, see
            :func:`generate_self_pairs`) and, at the end, the edit itself (:meth:`AlignEZEdit.save`).

    Returns:
        The fitted :class:`AlignEZEdit`.

    Raises:
        ValueError: No or empty queries, layers outside the model, or no usable pair.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> cfg = AlignEZConfig(description_tokens=4, response_tokens=6, n_edit_layers=1, do_sample=True)
        >>> edit = fit_alignez(tiny_model(seed=1), ["tell me a story", "help me fix my code"], cfg,
        ...                    progress=False)
        >>> edit.help.shape, len(edit.layers)
        (torch.Size([1, 2, 16]), 1)
    """
    config = config or AlignEZConfig()
    n_layers = model.cfg.n_layers
    explicit = (
        normalize_layers(list(config.layers), n_layers) if config.layers is not None else None
    )
    candidates = (
        normalize_layers(list(config.candidate_layers), n_layers)
        if config.candidate_layers is not None
        else _default_candidates(n_layers)
    )
    records = generate_self_pairs(model, queries, config, progress=progress, out=out)
    counts = Counter(r["dropped"] or "kept" for r in records)
    kept = [r for r in records if r["dropped"] is None]
    if not kept:
        raise ValueError(
            f"no usable AlignEZ pair among {len(records)} queries (dropped: {dict(counts)}): use more "
            "queries, larger description_tokens/response_tokens, or a chat model that follows instructions"
        )
    help_emb, harm_emb, sim, use = _embed_pairs(model, kept, config, progress=progress)
    n_similar = len(kept) - int(use.numel())
    if n_similar:
        counts["similar"] = n_similar
        counts["kept"] -= n_similar
    norms = torch.cat([help_emb, harm_emb]).norm(dim=-1).mean(0)  # [layer]
    subspaces, per_layer = _fit_layers(help_emb, harm_emb, norms, config)
    chosen = (
        explicit
        if explicit is not None
        else _choose_layers(per_layer, subspaces, candidates, config, n_pairs=int(use.numel()))
    )
    missing = [layer for layer in chosen if layer not in subspaces]
    if missing:
        raise ValueError(
            f"layers {missing} show no help/harm difference at all; choose other layers"
        )
    center, query_center = _centres(model, queries, help_emb, harm_emb, chosen, config)
    stats = {
        "n_queries": len(records),
        "n_pairs": int(use.numel()),
        "dropped": {k: v for k, v in counts.items() if k != "kept"},
        "pairs": [
            {
                "index": r["index"],
                "similarity": float(sim[j]),
                "used": bool(sim[j] <= config.max_similarity),
            }
            for j, r in enumerate(kept)
        ],
        "candidate_layers": candidates,
        "layer_rule": config.layer_rule if explicit is None else "explicit",
        "per_layer": per_layer,
    }
    idx = torch.tensor(chosen)
    edit = AlignEZEdit(
        model_name=str(model.cfg.model_name),
        layers=tuple(chosen),
        help=torch.stack([subspaces[x].help for x in chosen]),
        harm=torch.stack([subspaces[x].harm for x in chosen]),
        center=center,
        query_center=query_center,
        resid_norm=norms[idx],
        config=config,
        stats=stats,
        n_model_layers=n_layers,
        model_fingerprint=model_fingerprint(model),
    )
    log.info(
        "AlignEZ: %d pairs of %d queries (dropped %s), layers %s",
        stats["n_pairs"],
        len(records),
        stats["dropped"],
        chosen,
    )
    if out is not None:
        edit.save(out)
    return edit


def _embed_pairs(
    model: LensModel, kept: Sequence[dict[str, Any]], config: AlignEZConfig, *, progress: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 2: both answers of each pair read under the plain prompt, at every layer; too-similar pairs out.

    Returns:
        ``(help, harm, similarity, used)``: the used pairs' embeddings ``[n_used, layer, d_model]``,
        every pair's similarity and the indices of the used ones.
    """
    n = len(kept)
    texts = [r["query"] for r in kept] * 2
    answers = [r["help_response"] for r in kept] + [r["harm_response"] for r in kept]
    res = read_responses(
        model,
        texts,
        answers,
        layers=list(range(model.cfg.n_layers)),
        site=SITE,
        read="mean",
        batch_size=config.batch_size,
        nll=False,
        progress=progress,
    )
    help_all, harm_all = res.readings[:n], res.readings[n:]
    sim = _pair_similarity(help_all, harm_all, config.similarity)
    use = (sim <= config.max_similarity).nonzero().flatten()
    if use.numel() == 0:
        raise ValueError(
            f"all {n} AlignEZ pairs have embedding similarity above max_similarity={config.max_similarity} "
            f"(min {float(sim.min()):.4f}): raise max_similarity or use queries whose answers differ more"
        )
    return help_all[use], harm_all[use], sim, use


def _fit_layers(
    help_emb: Tensor, harm_emb: Tensor, norms: Tensor, config: AlignEZConfig
) -> tuple[dict[int, Any], dict[str, dict[str, Any]]]:
    """Step 3: the subspace of every layer with a help/harm difference, and every layer's statistics."""
    subspaces, per_layer = {}, {}
    for layer in range(help_emb.shape[1]):
        diff = help_emb[:, layer] - harm_emb[:, layer]
        entry: dict[str, Any] = {
            "resid_norm": float(norms[layer]),
            "difference": float(diff.norm(dim=-1).mean() / norms[layer].clamp(min=1e-12)),
            "heldout_separation": _none_if_nan(heldout_separation(diff)),
        }
        if float(diff.abs().max()) > 0:
            sub = fit_subspace(help_emb[:, layer], harm_emb[:, layer], config.k, harm=config.harm)
            subspaces[layer] = sub
            entry.update(
                separation=sub.separation,
                explained=sub.explained,
                singular_values=[float(x) for x in sub.singular_values],
            )
        per_layer[resid_hook_name(layer, SITE)] = entry
    return subspaces, per_layer


def _choose_layers(
    per_layer: dict[str, dict[str, Any]],
    subspaces: dict[int, Any],
    candidates: list[int],
    config: AlignEZConfig,
    *,
    n_pairs: int,
) -> list[int]:
    """Step 4: the ``n_edit_layers`` candidate layers that score highest under ``layer_rule``."""
    pool = [layer for layer in candidates if layer in subspaces]
    if not pool:
        raise ValueError(
            f"the help and harm embeddings are identical at every candidate layer {candidates}"
        )
    rule = config.layer_rule
    if rule == "separation" and n_pairs < 2:
        log.warning(
            "layer_rule='separation' needs at least 2 pairs; choosing layers by 'difference'"
        )
        rule = "difference"

    def score(layer: int) -> tuple[float, float]:
        e = per_layer[resid_hook_name(layer, SITE)]
        if rule == "separation":
            return (
                e["heldout_separation"] if e["heldout_separation"] is not None else 0.0,
                e["difference"],
            )
        return (e["difference"], 0.0)

    return sorted(sorted(pool, key=score, reverse=True)[: config.n_edit_layers])


def _centres(
    model: LensModel,
    queries: Sequence[str],
    help_emb: Tensor,
    harm_emb: Tensor,
    chosen: list[int],
    config: AlignEZConfig,
) -> tuple[Tensor, Tensor]:
    """The gate centre (help/harm midpoint) and the filter centre (mean query residual) at ``chosen``."""
    if not config.center:
        zeros = torch.zeros(len(chosen), model.cfg.d_model)
        return zeros, zeros.clone()
    idx = torch.tensor(chosen)
    center = 0.5 * (help_emb[:, idx].mean(0) + harm_emb[:, idx].mean(0))
    phi = collect_resid(
        model,
        [render_chat(model.tokenizer, q) for q in queries],
        layers=chosen,
        site=SITE,
        batch_size=config.batch_size,
        progress=False,
        backend="fast",
    )
    return center, phi.mean(0)
