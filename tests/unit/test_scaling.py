"""The launch configurations shipped for accelerate are ones accelerate reads, as documented."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from icon2_lens.dpo.settings import DPOSettings

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "ddp_cpu.yaml": ("MULTI_CPU", {}),
    "multi_gpu.yaml": ("MULTI_GPU", {}),
    "zero2.yaml": ("DEEPSPEED", {"zero_stage": 2}),
    "zero3.yaml": ("DEEPSPEED", {"zero_stage": 3, "zero3_save_16bit_model": True}),
    "fsdp2.yaml": ("FSDP", {"fsdp_version": 2}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_reads_each_config(name):
    path = ROOT / "configs" / "accelerate" / name
    cfg = load_config_from_file(str(path))
    kind, keys = EXPECTED[name]
    assert str(cfg.distributed_type).endswith(kind)
    section = {**(cfg.deepspeed_config or {}), **(cfg.fsdp_config or {})}
    for key, value in keys.items():
        assert section[key] == value
    text = path.read_text(encoding="utf-8")
    assert "icon2_lens.cli" in text  # each file says how to launch with it
    assert name in (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")


def test_precompute_ref_log_probs_reaches_trl(tmp_path):
    cfg = DPOSettings(precompute_ref_log_probs=True).to_dpo_config(tmp_path)
    assert cfg.precompute_ref_log_probs is True
    assert DPOSettings().to_dpo_config(tmp_path).precompute_ref_log_probs is False
