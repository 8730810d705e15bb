"""Extraction speed and memory on the embedded model, measured side by side in one run.

Prints:
1. extraction throughput (``collect_resid`` at every layer, last token kept) divided by plain
   forward throughput (``model(tokens, attention_mask)`` returning logits) on the same batches,
   alternating the two three times and taking medians (target >= 0.9);
2. peak resident memory added by ``collect_resid`` at n = 64, 256, 1024 prompts, each in a fresh
   subprocess, against the size of the kept activations (growth should be linear in n).

Usage: ``.venv/bin/python benchmarks/bench_extract.py [--quick]``
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def _prompts(model, n: int) -> list[str]:
    from icon2_lens.directions.criteria import get_criteria
    from icon2_lens.instructions.builtin import load_instructions
    from icon2_lens.model.chat import render_chat

    base = load_instructions("train") + load_instructions("heldout")
    crit = get_criteria(["helpfulness"])[0]
    out = []
    i = 0
    while len(out) < n:
        q = base[i % len(base)]
        if i >= len(base):
            q = f"{q} (variant {i // len(base)})"
        system = crit.positive if i % 2 == 0 else crit.negative
        out.append(render_chat(model.tokenizer, q, system=system))
        i += 1
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def speed(n: int, batch_size: int) -> None:
    import torch

    from icon2_lens.model.chat import tokenize_prompts
    from icon2_lens.model.collect import collect_resid
    from icon2_lens.model.load import load_model

    torch.set_num_threads(2)
    model = load_model()
    texts = _prompts(model, n)
    tok = model.tokenizer
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    batches = [[texts[i] for i in order[k : k + batch_size]] for k in range(0, n, batch_size)]

    def plain() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                ids, mask = tokenize_prompts(tok, b)
                model(ids, attention_mask=mask)
        return n / (time.perf_counter() - t)

    def extract() -> float:
        t = time.perf_counter()
        collect_resid(model, texts, batch_size=batch_size, progress=False)
        return n / (time.perf_counter() - t)

    plain(), extract()  # warm-up
    p, e = [], []
    for _ in range(3):
        p.append(plain())
        e.append(extract())
    pm, em = statistics.median(p), statistics.median(e)
    print(
        f"speed: n={n} prompts, batch {batch_size}, all {model.cfg.n_layers} layers, mean {statistics.mean(lengths):.0f} tokens"
    )
    print(f"  plain forward      {pm:7.2f} prompts/s  (runs: {', '.join(f'{x:.2f}' for x in p)})")
    print(f"  extraction (cache) {em:7.2f} prompts/s  (runs: {', '.join(f'{x:.2f}' for x in e)})")
    print(f"  ratio extraction / plain = {em / pm:.3f}  (target >= 0.9)")


def memory_child(n: int, batch_size: int) -> None:
    import torch

    from icon2_lens.model.collect import collect_resid
    from icon2_lens.model.load import load_model

    torch.set_num_threads(2)
    model = load_model()
    texts = _prompts(model, n)
    collect_resid(model, texts[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    acts = collect_resid(model, texts, batch_size=batch_size, progress=False)
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss_mb())
    kept = acts.numel() * acts.element_size() / 2**20
    print(json.dumps({"n": n, "peak_added_mb": peak[0] - base, "kept_mb": kept}))


def memory(ns: list[int], batch_size: int) -> None:
    rows = []
    for n in ns:
        # A fixed mmap threshold makes glibc return freed large blocks at once, so resident memory
        # follows live memory instead of the allocator's high-water mark.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), "--batch-size", str(batch_size)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("memory: peak resident memory added by collect_resid (fresh process per n)")
    for r in rows:
        print(
            f"  n={r['n']:5d}  peak added {r['peak_added_mb']:8.1f} MB   kept activations {r['kept_mb']:7.1f} MB"
        )
    if len(rows) >= 3:
        ns = [r["n"] for r in rows]
        ys = [r["peak_added_mb"] for r in rows]
        mx, my = statistics.mean(ns), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(ns, ys)) / sum((x - mx) ** 2 for x in ns)
        intercept = my - slope * mx
        worst = max(abs(y - (intercept + slope * x)) for x, y in zip(ns, ys))
        kept = rows[-1]["kept_mb"] / rows[-1]["n"]
        print(
            f"  linear fit: {slope * 1024:.0f} KB per prompt + {intercept:.0f} MB "
            f"(largest deviation {worst:.0f} MB); kept activations are {kept * 1024:.0f} KB per prompt "
            f"(n x {rows[-1]['kept_mb'] / rows[-1]['n'] * 2**20 / 4:.0f} floats); "
            "the constant is one batch of transient activations"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--memory-only", action="store_true", help="skip the speed comparison")
    ap.add_argument("--memory-child", type=int, default=None)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.batch_size)
        return
    if not args.memory_only:
        speed(32 if args.quick else 128, args.batch_size)
    memory([16, 32, 64] if args.quick else [64, 256, 1024], args.batch_size)


if __name__ == "__main__":
    main()
