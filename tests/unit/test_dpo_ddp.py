"""DPO spread over two CPU processes (DDP through accelerate, gloo) trains the same model as one."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from icon2_lens.testing import save_tiny_model

JOB = Path(__file__).with_name("ddp_job.py")
PROMPTS = ["tell me a story", "write a poem", "explain saving", "plan my trip"]


def _records() -> list[dict]:
    out = []
    for i in range(16):
        out.append(
            {
                "prompt": [{"role": "user", "content": f"{PROMPTS[i % 4]} number {i}"}],
                "chosen": [{"role": "assistant", "content": "here is a careful , good answer ."}],
                "rejected": [{"role": "assistant", "content": "no . go away ."}],
            }
        )
    return out


def test_two_process_dpo_equals_one_process_with_the_same_global_batch(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny", n_layers=2)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run = subprocess.run(
        [sys.executable, str(JOB), str(model_dir), str(pairs), str(ddp), str(single)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log_ddp = json.loads((ddp / "dpo_log.json").read_text())
    log_one = json.loads((single / "dpo_log.json").read_text())
    assert log_ddp["processes"]["num_processes"] == 2
    assert log_ddp["processes"]["distributed_type"] == "MULTI_CPU"
    assert (
        log_ddp["processes"]["global_batch_size"] == log_one["processes"]["global_batch_size"] == 4
    )
    assert log_ddp["n_steps"] == log_one["n_steps"] == 4  # 16 records / 4 per step
    # no stray temporary files from a second writer
    assert sorted(p.name for p in ddp.iterdir() if p.name.startswith(".")) == []
    w_ddp = load_file(ddp / "model" / "model.safetensors")
    w_one = load_file(single / "model" / "model.safetensors")
    start = load_file(Path(model_dir) / "model.safetensors")
    assert w_ddp.keys() == w_one.keys()
    moved = max(float((w_one[k] - start[k]).abs().max()) for k in w_one if k in start)
    assert moved > 1e-3  # training changed the weights
    for k in w_one:  # DDP's averaged gradients over 2 × 2 records = one process over 4
        assert torch.allclose(w_ddp[k], w_one[k], atol=1e-5), k
    losses = [e["loss"] for e in log_ddp["log_history"] if "loss" in e]
    ref = [e["loss"] for e in log_one["log_history"] if "loss" in e]
    assert losses and len(losses) == len(ref)
    assert max(abs(a - b) for a, b in zip(losses, ref)) < 1e-4
