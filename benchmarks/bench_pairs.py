"""Pair-generation speed and Icon² cost per pair, measured side by side in one run.

Prints two ratios on the embedded model (2 CPU threads):

(a) steered pair generation tokens/s ÷ unsteered Hugging Face ``generate`` tokens/s, same rows
    (each instruction twice: chosen +γ⁺ and rejected γ⁻ in one batch), same batch and exactly the
    same number of new tokens per row (stopping disabled on both sides), greedy; the two are
    alternated three times and medians compared (target ≥ 1.0). The bridge backend's ratio is
    printed too, for reference.
(b) wall-clock per kept pair on one instruction pool: the Icon² path (direction extraction for the
    four criteria, consistency scoring of the whole pool, top fraction kept, two steered
    generations per kept instruction, degenerate pairs dropped) ÷ a Sampling-Ranking path on the
    same kept instructions (5 seeded samples each, every sample judged by the model's own inherent
    score along the instruction's criterion, best vs worst as the pair; ties and degenerate
    pairs dropped) (target ≤ 0.45; Icon² reports 0.552). Instruction synthesis is common to both
    and excluded; the built-in instructions stand in for a synthesized pool.

Usage: ``.venv/bin/python benchmarks/bench_pairs.py [--quick]``
"""

import argparse
import statistics
import time


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def speed(model, hf, rows_text, batch: int, new_tokens: int, repeats: int) -> None:
    import torch

    from icon2_lens.directions.steer import SteeringSpec
    from icon2_lens.model.chat import encode_prompts, pad_left
    from icon2_lens.model.generate import Decoding, generate_rows

    tok = model.tokenizer
    rows = encode_prompts(tok, rows_text[: batch // 2])
    rows = rows + rows
    ds = _toy_direction(model)
    gam = [0.02] * (batch // 2) + [-0.02] * (batch // 2)
    spec = SteeringSpec(directions=ds, gamma=gam, layers=list(range(13, 23)))
    decoding = Decoding(max_new_tokens=new_tokens, stop=False)
    ids, mask = pad_left(tok, rows)
    n_tokens = batch * new_tokens

    def ours(backend):
        return lambda: generate_rows(model, rows, decoding, steering=[spec], backend=backend)

    def theirs():
        with torch.no_grad():
            return hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

    times = {"fast": [], "bridge": [], "hf": []}
    ours("fast")()  # warm-up (builds the twin)
    for _ in range(repeats):
        times["fast"].append(_timed(ours("fast"))[0])
        times["hf"].append(_timed(theirs)[0])
        times["bridge"].append(_timed(ours("bridge"))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: n_tokens / v for k, v in med.items()}
    print(f"(a) batch {batch} rows × {new_tokens} new tokens, medians of {repeats}:")
    print(
        f"    steered pairs (fast twin) {tps['fast']:.1f} tok/s | HF generate (unsteered, default attention) "
        f"{tps['hf']:.1f} tok/s | steered pairs through the bridge {tps['bridge']:.1f} tok/s"
    )
    print(
        f"    ratio steered/HF = {tps['fast'] / tps['hf']:.3f}  (target >= 1.0); "
        f"bridge/HF = {tps['bridge'] / tps['hf']:.3f}"
    )


def _toy_direction(model):
    import torch

    from icon2_lens.directions.set import DirectionSet

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(
        torch.randn(model.cfg.n_layers, model.cfg.d_model, generator=g), dim=-1
    )
    return DirectionSet(
        criterion="toy",
        layers=tuple(range(model.cfg.n_layers)),
        vectors=v,
        method="mean_diff",
        stats=tuple({"mean_resid_norm": 100.0} for _ in range(model.cfg.n_layers)),
    )


def cost(
    model,
    pool: list[str],
    *,
    fraction: float,
    extract_n: int,
    new_tokens: int,
    samples: int,
    batch_rows: int,
) -> None:
    import torch

    from icon2_lens.consistency.filter import KeptInstruction
    from icon2_lens.consistency.scores import score_consistency
    from icon2_lens.directions.criteria import get_criteria
    from icon2_lens.directions.extract import ExtractConfig, run_extraction
    from icon2_lens.judge.reading import score_responses
    from icon2_lens.judge.rules import degeneracy
    from icon2_lens.model.chat import encode_prompts, render_chat
    from icon2_lens.model.generate import Decoding, generate_rows
    from icon2_lens.pairs.icon2 import PairConfig, generate_pairs

    config = PairConfig(
        layers=tuple(range(13, 23)), max_new_tokens=new_tokens, batch_size=batch_rows // 2
    )
    layers = list(config.layers)
    # ---- Icon² path: directions, consistency of the whole pool, two steered answers per kept instruction
    t_extract, res = _timed(
        lambda: run_extraction(
            model,
            get_criteria(["general", "helpfulness", "honesty", "harmlessness"]),
            config=ExtractConfig(n_instructions=extract_n, n_heldout=8),
            figures=False,
            progress=False,
        )
    )
    sets = {name: r.directions for name, r in res.results.items()}
    t_filter, scores = _timed(
        lambda: score_consistency(model, pool, list(sets.values()), progress=False)
    )
    sel = scores.select(fraction=fraction)
    crit = scores.best_criterion
    kept = [KeptInstruction(i, pool[i], crit[i], float(scores.best[i])) for i in sel.kept]
    t_pairs, pairs = _timed(lambda: generate_pairs(model, kept, sets, config, progress=False))
    icon_total = t_extract + t_filter + t_pairs
    n_icon = len(pairs.records)
    icon_tokens = sum(
        len(model.tokenizer(r[k][0]["content"])["input_ids"])
        for r in pairs.records
        for k in ("chosen", "rejected")
    )

    # ---- Sampling-Ranking path on the same kept instructions: N samples each, every one judged
    tok = model.tokenizer

    def sample_all():
        rows = encode_prompts(tok, [render_chat(tok, k.instruction) for k in kept])
        dec = Decoding(
            max_new_tokens=new_tokens, do_sample=True, temperature=0.8, top_p=0.95, seed=0
        )
        jobs = [(i, s) for i in range(len(kept)) for s in range(samples)]
        gens = []
        for start in range(0, len(jobs), batch_rows):
            chunk = jobs[start : start + batch_rows]
            gens += generate_rows(
                model,
                [rows[i] for i, _ in chunk],
                dec,
                row_seeds=[kept[i].index * samples + s for i, s in chunk],
            )
        return jobs, gens

    t_sample, (jobs, gens) = _timed(sample_all)

    def judge():
        return score_responses(
            model,
            [kept[i].instruction for i, _ in jobs],
            [g.text for g in gens],
            [sets[kept[i].criterion] for i, _ in jobs],
            layers=[layers] * len(jobs),
            batch_size=16,
            nll=False,
        )  # the ranking needs the score only

    t_judge, judged = _timed(judge)
    n_sr = 0
    for i in range(len(kept)):
        idx = [
            n
            for n, (j, _) in enumerate(jobs)
            if j == i and degeneracy(gens[n].text, gens[n].token_ids) is None
        ]
        if len(idx) < 2:
            continue
        vals = torch.stack([judged["projection"][n] for n in idx])
        best, worst = idx[int(vals.argmax())], idx[int(vals.argmin())]
        if gens[best].text != gens[worst].text:
            n_sr += 1
    sr_total = t_sample + t_judge
    per_icon = icon_total / max(n_icon, 1)
    per_sr = sr_total / max(n_sr, 1)
    sr_tokens = sum(len(g.token_ids) for g in gens)
    print(
        f"(b) pool {len(pool)} instructions, kept top {fraction:g} = {len(kept)}, <= {new_tokens} new tokens, "
        f"{batch_rows} rows per batch on both paths"
    )
    print(
        f"    Icon²: extract ({extract_n} instructions x 4 criteria) {t_extract:.1f} s + filter {t_filter:.1f} s + "
        f"pairs {t_pairs:.1f} s = {icon_total:.1f} s for {n_icon} kept pairs (dropped {pairs.counts['dropped']}; "
        f"{icon_tokens} answer tokens kept) -> {per_icon:.2f} s/pair"
    )
    print(
        f"    Sampling-Ranking: {samples} samples {t_sample:.1f} s ({sr_tokens} tokens) + judging {t_judge:.1f} s = "
        f"{sr_total:.1f} s for {n_sr} pairs -> {per_sr:.2f} s/pair"
    )
    print(
        f"    ratio Icon²/Sampling-Ranking per kept pair = {per_icon / per_sr:.3f}  (target <= 0.45; Icon² paper 0.552)"
    )
    marginal = (t_filter + t_pairs) / max(n_icon, 1)
    print(
        f"    without the one-off direction extraction (its share vanishes as the pool grows; Icon² extracts "
        f"once from 1k instructions for 100k pairs): {marginal:.2f} s/pair, ratio {marginal / per_sr:.3f}"
    )


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from icon2_lens.instructions.builtin import load_instructions
    from icon2_lens.model.chat import render_chat
    from icon2_lens.model.load import embedded_model_dir, load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, noisier)")
    p.add_argument("--only", choices=["a", "b"], default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    model = load_model()
    pool = load_instructions("train") + load_instructions("heldout")
    if args.only != "b":
        hf = AutoModelForCausalLM.from_pretrained(
            str(embedded_model_dir()), dtype=torch.float32
        ).eval()
        speed(
            model,
            hf,
            [render_chat(model.tokenizer, q) for q in pool[:32]],
            batch=16 if args.quick else 32,
            new_tokens=32 if args.quick else 64,
            repeats=1 if args.quick else 3,
        )
        del hf
    if args.only != "a":
        cost(
            model,
            pool[:96] if args.quick else pool,
            fraction=0.25,
            extract_n=16 if args.quick else 32,
            new_tokens=48 if args.quick else 96,
            samples=5,
            batch_rows=32,
        )


if __name__ == "__main__":
    main()
