import json

import pytest
import torch
from safetensors import safe_open

from icon2_lens.directions.set import DirectionSet, load_direction_set, save_direction_set
from icon2_lens.model.load import model_fingerprint


def _ds(d=16, layers=(0, 2), model=None):
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(len(layers), d, generator=g), dim=-1)
    meta = {"model_name": "m", "seed": 0}
    if model is not None:
        meta["model_fingerprint"] = model_fingerprint(model)
    stats = tuple(
        {"scale": 1.0 + i, "explained_variance": 0.5, "mean_resid_norm": 3.0} for i in layers
    )
    return DirectionSet(
        criterion="honesty", layers=tuple(layers), vectors=v, method="pca", stats=stats, meta=meta
    )


def test_roundtrip_bit_identical(tmp_path):
    ds = _ds()
    save_direction_set(ds, tmp_path / "d")
    back = load_direction_set(tmp_path / "d")
    assert torch.equal(back.vectors, ds.vectors)
    assert back.layers == ds.layers and back.method == ds.method and back.criterion == ds.criterion
    assert back.stats == ds.stats and back.meta["seed"] == 0
    # saving twice gives byte-identical files
    save_direction_set(back, tmp_path / "e")
    for name in ("directions.safetensors", "cfg.json"):
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "e" / name).read_bytes()


def test_file_layout(tmp_path):
    save_direction_set(_ds(), tmp_path)
    with safe_open(str(tmp_path / "directions.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"blocks.0.hook_resid_post", "blocks.2.hook_resid_post"}
        assert f.metadata()["format"] == "icon2_lens.directions"
        assert f.get_tensor("blocks.0.hook_resid_post").dtype == torch.float32
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["per_layer"]["blocks.2.hook_resid_post"]["scale"] == 3.0
    assert cfg["sign_convention"].startswith("mean((h_pos - h_neg)")


def test_version_and_format_checks(tmp_path):
    save_direction_set(_ds(), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version"):
        load_direction_set(tmp_path)
    cfg["format"] = "something"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not an icon2_lens direction set"):
        load_direction_set(tmp_path)
    with pytest.raises(ValueError, match="not a saved direction set"):
        load_direction_set(tmp_path / "nothing")


def test_model_checks(tmp_path, tiny):
    from icon2_lens.testing import tiny_model

    save_direction_set(_ds(model=tiny), tmp_path / "ok")
    assert load_direction_set(tmp_path / "ok", model=tiny).layers == (0, 2)
    other = tiny_model(seed=1)
    with pytest.raises(ValueError, match="weights differ"):
        load_direction_set(tmp_path / "ok", model=other)
    assert load_direction_set(tmp_path / "ok", model=other, check_fingerprint=False)
    save_direction_set(_ds(d=8), tmp_path / "narrow")
    with pytest.raises(ValueError, match="width 8"):
        load_direction_set(tmp_path / "narrow", model=tiny)
    save_direction_set(_ds(layers=(0, 7)), tmp_path / "deep")
    with pytest.raises(ValueError, match="has layer 7"):
        load_direction_set(tmp_path / "deep", model=tiny)


def test_json_has_no_nan(tmp_path):
    from icon2_lens._files import write_json

    write_json({"a": float("nan"), "b": [1.0, float("inf")]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.0, None]}


def test_damaged_files_raise_value_error(tmp_path):
    save_direction_set(_ds(), tmp_path)
    (tmp_path / "directions.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_direction_set(tmp_path)
    save_direction_set(_ds(), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["layers"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks layers"):
        load_direction_set(tmp_path)


def test_fingerprint_follows_weight_changes(tiny):
    before = model_fingerprint(tiny)
    assert model_fingerprint(tiny) == before
    p = next(tiny.original_model.parameters())
    with torch.no_grad():
        p.add_(1.0)
    try:
        assert model_fingerprint(tiny) != before
    finally:
        with torch.no_grad():
            p.sub_(1.0)
