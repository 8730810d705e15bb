"""DPO with a LoRA adapter through peft: an ordinary merged HF directory plus the PEFT adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from icon2_lens.dpo.settings import DPOSettings
from icon2_lens.dpo.train import train_dpo
from icon2_lens.testing import save_tiny_model

pytest.importorskip("peft")

PROMPTS = ["tell me a story", "write a poem", "explain saving", "plan my trip"]


def _records(n=8):
    return [
        {
            "prompt": [{"role": "user", "content": f"{PROMPTS[i % 4]} number {i}"}],
            "chosen": [{"role": "assistant", "content": "here is a careful , good answer ."}],
            "rejected": [{"role": "assistant", "content": "no . go away ."}],
        }
        for i in range(n)
    ]


def test_lora_trains_an_adapter_and_saves_merged_weights(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny", n_layers=2)
    settings = DPOSettings(learning_rate=5e-2, per_device_train_batch_size=4, lora_r=4)
    res = train_dpo(
        str(model_dir), _records(), tmp_path / "out", settings=settings, png=False, warmup_ratio=0.0
    )
    adapter = tmp_path / "out" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["peft_type"] == "LORA"
    assert any("lora_A" in k for k in load_file(adapter / "adapter_model.safetensors"))
    start = load_file(model_dir / "model.safetensors")
    merged = load_file(res.model_dir / "model.safetensors")
    assert set(merged) == set(start)  # a plain HF checkpoint: no lora_* keys left
    changed = [k for k in start if not torch.equal(start[k], merged[k])]
    assert changed and all(k.endswith(".weight") for k in changed)
    assert not any("norm" in k or "embed" in k for k in changed)  # only the adapted linear layers
    AutoModelForCausalLM.from_pretrained(res.model_dir)  # loads as any causal LM
    first = next(e for e in res.log_history if "rewards/margins" in e)
    assert abs(first["rewards/margins"]) < 1e-3  # reference = the starting weights (adapter off)
    log = json.loads((tmp_path / "out" / "dpo_log.json").read_text())
    assert log["settings"]["lora_r"] == 4


def test_lora_with_an_explicit_reference_is_refused(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny", n_layers=2)
    with pytest.raises(ValueError, match="drop ref_model"):
        train_dpo(
            str(model_dir),
            _records(),
            tmp_path / "o",
            ref_model=str(model_dir),
            settings=DPOSettings(lora_r=2),
        )
