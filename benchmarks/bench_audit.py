"""The full audit of the four built-in directions on the embedded model: time per section.

Target (issue 10): all layers, all domains, every confound and the shortcut report of a pairs file
in <= 10 minutes on 2 CPU cores. Absolute times are noisy on a shared machine, so the run also
measures plain forward throughput (tokens per second) on the same model just before, and prints
each section's time next to it.

Usage::

    .venv/bin/python benchmarks/bench_audit.py --directions RUN/extract --pairs RUN/pairs/pairs.jsonl \\
        [--trained RUN/dpo/model] [--out DIR]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def forward_tokens_per_second(model, n_batches: int = 4) -> float:
    import torch

    from icon2_lens.instructions.builtin import load_instructions
    from icon2_lens.model.chat import render_chat, tokenize_prompts

    texts = [
        render_chat(model.tokenizer, q) for q in load_instructions("heldout")[: 16 * n_batches]
    ]
    t0, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for i in range(0, len(texts), 16):
            ids, mask = tokenize_prompts(model.tokenizer, texts[i : i + 16])
            model(ids, attention_mask=mask, return_type=None)
            tokens += int(mask.sum())
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from icon2_lens.audit.config import AuditConfig
    from icon2_lens.audit.run import run_audit
    from icon2_lens.directions.folder import load_extraction
    from icon2_lens.model.load import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--directions", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--trained", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    model = load_model()
    sets, intervals = load_extraction(args.directions, model=model)
    trained = load_model(args.trained) if args.trained else None
    tps = forward_tokens_per_second(model)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_audit_"))
    times = {}
    total = 0.0
    for section in AuditConfig().sections:
        if section == "shift" and trained is None:
            continue
        t0 = time.perf_counter()
        run_audit(
            model,
            sets,
            config=AuditConfig(sections=(section,)),
            pairs=args.pairs,
            trained=trained,
            intervals=intervals,
            out=out / section,
            png=False,
            progress=False,
        )
        times[section] = time.perf_counter() - t0
        total += times[section]
    print(
        json.dumps(
            {
                "forward_tokens_per_s": round(tps, 1),
                "seconds": {k: round(v, 1) for k, v in times.items()},
                "total_minutes": round(total / 60, 2),
                "target_minutes": 10,
                "within_target": total <= 600,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
