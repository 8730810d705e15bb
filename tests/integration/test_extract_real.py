"""Direction extraction on the embedded model: the directions must separate held-out prompts."""

import subprocess
import sys

import pytest
import torch

from icon2_lens import ExtractConfig, extract_criterion, get_criteria, load_direction_set


@pytest.fixture(scope="module")
def honesty(smol):
    cfg = ExtractConfig(method="pca_symmetric", n_instructions=48, n_heldout=24, batch_size=16)
    return extract_criterion(smol, get_criteria(["honesty"])[0], config=cfg, progress=False)


def test_heldout_separation(honesty):
    t = honesty.table
    lo, hi = honesty.interval
    inside = t[(t.layer >= lo) & (t.layer <= hi)]
    assert hi - lo + 1 == 10  # a third of 30 layers
    assert inside.heldout_paired_acc.min() >= 0.9
    assert inside.heldout_single_acc.mean() > 0.75
    # directions are unit vectors, oriented towards the positive prompt
    assert torch.allclose(honesty.directions.vectors.norm(dim=-1), torch.ones(30), atol=1e-5)
    assert (t.heldout_gap[t.layer > 0] > 0).all()


def test_residual_norms_grow_with_depth(honesty):
    norms = honesty.directions.stat("mean_resid_norm")
    assert norms[-1] > 5 * norms[0]


def test_save_load_against_model(honesty, smol, tmp_path):
    honesty.directions.save(tmp_path)
    back = load_direction_set(tmp_path, model=smol)
    assert torch.equal(back.vectors, honesty.directions.vectors)


def _cli_extract(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "icon2_lens.cli",
        "extract",
        "--criteria",
        "harmlessness",
        "--n-instructions",
        "16",
        "--n-heldout",
        "8",
        "--layers",
        "8-20",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_cli_extract_small(tmp_path):
    out = tmp_path / "run"
    proc = _cli_extract(out)
    assert proc.returncode == 0, proc.stderr
    assert "harmlessness" in proc.stdout and "interval" in proc.stdout
    assert (out / "harmlessness" / "directions.safetensors").is_file()
    assert (out / "diagnostics.json").is_file()
    assert (out / "figures" / "harmlessness_layer_selection.png").is_file()
    assert (out / "figures" / "harmlessness_layer_selection.html").is_file()
    ds = load_direction_set(out / "harmlessness")
    assert ds.layers == tuple(range(8, 21))


def test_cli_reports_bad_input(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[[criteria]]\nname = "x"\npositive = "p"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "icon2_lens.cli",
            "extract",
            "--criteria-file",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "missing field" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "icon2_lens.cli",
            "extract",
            "--layers",
            "40",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "out of range" in proc.stderr


def test_cli_same_seed_bit_identical(tmp_path):
    for name in ("a", "b"):
        proc = _cli_extract(tmp_path / name, "--no-figures", "--seed", "3", "--method", "pca")
        assert proc.returncode == 0, proc.stderr
    for f in ("directions.safetensors", "cfg.json"):
        assert (tmp_path / "a" / "harmlessness" / f).read_bytes() == (
            tmp_path / "b" / "harmlessness" / f
        ).read_bytes()
