import json

import pytest
import torch

from icon2_lens.directions.criteria import Criterion, get_criteria
from icon2_lens.directions.extract import ExtractConfig, extract_criterion, run_extraction

TRAIN = [
    "what is a cat ?",
    "write a poem about the dog",
    "how do i save money ?",
    "tell me a story",
    "fix my code bug please",
    "plan a trip",
    "explain the word happy",
    "why is water good ?",
]
HELD = ["write a short email", "what is a bird ?", "how do i learn ?"]
CRIT = Criterion(
    name="kind",
    positive="you are a very kind and helpful assistant",
    negative="you are a rude liar",
)


def _cfg(**kw):
    return ExtractConfig(
        **{"method": "mean_diff", "n_instructions": 8, "n_heldout": 3, "batch_size": 4, **kw}
    )


def test_extract_criterion_shapes_and_meta(tiny):
    res = extract_criterion(tiny, CRIT, config=_cfg(), train=TRAIN, heldout=HELD, progress=False)
    ds = res.directions
    assert ds.vectors.shape == (tiny.cfg.n_layers, tiny.cfg.d_model)
    assert torch.allclose(ds.vectors.norm(dim=-1), torch.ones(tiny.cfg.n_layers), atol=1e-5)
    assert ds.meta["n_prompts"] == 8 and ds.meta["centering"] == "none"
    assert set(res.table.columns) >= {
        "heldout_paired_acc",
        "heldout_single_acc",
        "separation",
        "explained_variance",
        "cos_mean_diff",
        "mean_resid_norm",
    }
    # training contrasts project positively by construction (sign orientation)
    assert all(s["scale"] > 0 for s in ds.stats)
    lo, hi = res.interval
    assert 0 <= lo <= hi < tiny.cfg.n_layers


def test_same_seed_same_bytes(tmp_path, tiny):
    for name in ("a", "b"):
        run_extraction(
            tiny,
            [CRIT],
            config=_cfg(method="pca"),
            out=tmp_path / name,
            train=TRAIN,
            heldout=HELD,
            figures=False,
            progress=False,
        )
    for f in ("directions.safetensors", "cfg.json", "diagnostics.json"):
        assert (tmp_path / "a" / "kind" / f).read_bytes() == (
            tmp_path / "b" / "kind" / f
        ).read_bytes()


def test_seed_selects_instructions(tiny):
    a = extract_criterion(
        tiny, CRIT, config=_cfg(n_instructions=4, seed=0), train=TRAIN, heldout=HELD, progress=False
    )
    b = extract_criterion(
        tiny, CRIT, config=_cfg(n_instructions=4, seed=1), train=TRAIN, heldout=HELD, progress=False
    )
    assert a.directions.meta["instructions_sha256"] != b.directions.meta["instructions_sha256"]


def test_outputs_and_resume(tmp_path, tiny, monkeypatch):
    out = tmp_path / "run"
    crits = [CRIT, get_criteria(["honesty"])[0]]
    run_extraction(
        tiny,
        crits,
        config=_cfg(),
        out=out,
        train=TRAIN,
        heldout=HELD,
        figures=False,
        progress=False,
    )
    for c in ("kind", "honesty"):
        assert (out / c / "directions.safetensors").is_file() and (out / c / "cfg.json").is_file()
    diag = json.loads((out / "diagnostics.json").read_text())
    assert [s["criterion"] for s in diag["summary"]] == ["kind", "honesty"]

    # a second run reuses finished criteria instead of recomputing them
    import icon2_lens.directions.extract as ex

    calls = []
    real = ex.extract_criterion
    monkeypatch.setattr(ex, "extract_criterion", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_extraction(
        tiny,
        crits,
        config=_cfg(),
        out=out,
        train=TRAIN,
        heldout=HELD,
        figures=False,
        progress=False,
    )
    assert calls == []
    assert again.summary().equals(
        run_extraction(
            tiny, crits, config=_cfg(), train=TRAIN, heldout=HELD, figures=False, progress=False
        ).summary()
    )
    # the batch size does not change results, so it does not block resuming
    calls.clear()
    run_extraction(
        tiny,
        crits,
        config=_cfg(batch_size=3),
        out=out,
        train=TRAIN,
        heldout=HELD,
        figures=False,
        progress=False,
    )
    assert calls == []
    # different settings in the same folder are refused, not silently mixed
    with pytest.raises(ValueError, match="different settings"):
        run_extraction(
            tiny,
            crits,
            config=_cfg(method="pca"),
            out=out,
            train=TRAIN,
            heldout=HELD,
            figures=False,
            progress=False,
        )


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="empty"):
        extract_criterion(tiny, CRIT, config=_cfg(), train=[], heldout=HELD, progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_criterion(tiny, CRIT, config=_cfg(), train=TRAIN, heldout=[], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        extract_criterion(
            tiny, CRIT, config=_cfg(layers=(5,)), train=TRAIN, heldout=HELD, progress=False
        )
    with pytest.raises(ValueError, match="unknown method"):
        ExtractConfig(method="svd")
    with pytest.raises(ValueError, match="unknown site"):
        ExtractConfig(site="hook_embed")
    long = [" ".join(["cat"] * 200)]
    with pytest.raises(ValueError, match="context"):
        extract_criterion(tiny, CRIT, config=_cfg(), train=long, heldout=HELD, progress=False)


def test_model_without_chat_template():
    from icon2_lens.testing import tiny_model, tiny_tokenizer

    base = tiny_model(tiny_tokenizer(chat_template=False))
    with pytest.raises(ValueError, match="no chat template"):
        extract_criterion(base, CRIT, config=_cfg(), train=TRAIN, heldout=HELD, progress=False)


def test_png_failure_keeps_the_run(tmp_path, tiny, monkeypatch, caplog):
    import kaleido

    monkeypatch.setattr(
        kaleido,
        "write_fig_from_object_sync",
        lambda *a, **k: (_ for _ in ()).throw(OSError("no browser")),
    )
    out = tmp_path / "run"
    run_extraction(tiny, [CRIT], config=_cfg(), out=out, train=TRAIN, heldout=HELD, progress=False)
    assert (out / "kind" / "diagnostics.json").is_file()
    assert (out / "figures" / "kind_layer_selection.html").is_file()
    assert not list((out / "figures").glob("*.png"))
    assert "HTML figures only" in caplog.text


def test_wording_check_flags_layers_and_the_interval_avoids_them(tiny, tmp_path):
    from icon2_lens.directions.diagnostics import recommend_interval
    from icon2_lens.directions.folder import read_criterion

    honesty = get_criteria(["honesty"])[0]
    res = extract_criterion(tiny, honesty, config=_cfg(), train=TRAIN, heldout=HELD, progress=False)
    assert {"wording_min_acc", "wording_flag", "wording_worst"} <= set(res.table.columns)
    assert set(res.wording["wording"]) == {"truthful", "calibrated", "lying", "sincere"}
    flagged = [int(x) for x in res.table.loc[res.table["wording_flag"], "layer"]]
    assert res.summary()["wording_flagged_layers"] == flagged
    if len(flagged) < 3:  # some window is clean: the interval keeps off the flagged layers
        lo, hi = res.interval
        assert not set(flagged) & set(range(lo, hi + 1))
    # no window is clean (the tiny model has one inner layer): the rule falls back, and says so
    assert recommend_interval(res.table, 3, avoid=[1]) == (1, 1)
    # written and read back with the criterion
    run_extraction(
        tiny,
        [honesty],
        config=_cfg(),
        out=tmp_path,
        train=TRAIN,
        heldout=HELD,
        progress=False,
        figures=False,
    )
    back = read_criterion(res.directions, tmp_path / "honesty")
    assert back.wording is not None and len(back.wording) == len(res.wording)
    off = extract_criterion(
        tiny, honesty, config=_cfg(wording_check=False), train=TRAIN, heldout=HELD, progress=False
    )
    assert off.wording is None and "wording_flag" not in off.table
    assert torch.equal(
        off.directions.vectors, res.directions.vectors
    )  # the check changes no direction


def test_orthogonalize_option_projects_confounds_out_and_records_it(tiny, tmp_path):
    from icon2_lens.directions.confounds import fit_confounds
    from icon2_lens.directions.set import load_direction_set

    cfg = _cfg(orthogonalize=("length", "refusal"), wording_check=False)
    run_extraction(
        tiny,
        [CRIT],
        config=cfg,
        out=tmp_path,
        train=TRAIN,
        heldout=HELD,
        progress=False,
        figures=False,
    )
    ds = load_direction_set(tmp_path / "kind")
    cfg_json = json.loads((tmp_path / "kind" / "cfg.json").read_text())
    assert cfg_json["orthogonalized"]["confounds"] == ["length", "refusal"]
    assert cfg_json["extract_config"]["orthogonalize"] == ["length", "refusal"]
    for c in fit_confounds(tiny, ["length", "refusal"], layers=list(ds.layers)).values():
        cos = torch.nn.functional.cosine_similarity(ds.vectors, c.vectors, dim=-1)
        assert cos.abs().max() < 1e-6
    with pytest.raises(ValueError, match="unknown confound"):
        _cfg(orthogonalize=("tone",))


def test_the_answers_reading_sees_the_answers_and_not_the_prompts(tiny, monkeypatch):
    import icon2_lens.directions.contrast as contrast
    from icon2_lens.directions.contrast import answer_contrast_activations
    from icon2_lens.model.read import read_responses

    kind = ["you are very kind and helpful today", "i am happy to help with that"]

    def planted(model, criterion, instructions, **kw):
        # a planted behaviour: kind answers under the positive prompt, rude ones under the negative
        return [kind[i % 2] for i in range(len(instructions))], ["you are a rude liar"] * len(
            instructions
        )

    monkeypatch.setattr(contrast, "contrast_answers", planted)
    pos, neg = answer_contrast_activations(tiny, CRIT, TRAIN[:4], layers=[0, 2], progress=False)
    # each answer is read with its instruction alone: the system prompt never reaches the reading
    alone = read_responses(tiny, TRAIN[:4], planted(tiny, CRIT, TRAIN[:4])[0], layers=[0, 2])
    assert torch.allclose(pos, alone.readings, atol=1e-5)
    same = lambda model, criterion, instructions, **kw: (["the cat sat"] * 4, ["the cat sat"] * 4)  # noqa: E731
    monkeypatch.setattr(contrast, "contrast_answers", same)
    p2, n2 = answer_contrast_activations(tiny, CRIT, TRAIN[:4], layers=[0, 2], progress=False)
    assert torch.equal(p2, n2)  # the same answers under both prompts: no contrast at all

    monkeypatch.setattr(contrast, "contrast_answers", planted)
    res = extract_criterion(
        tiny, CRIT, config=_cfg(reading="answers"), train=TRAIN, heldout=HELD, progress=False
    )
    assert res.directions.meta["extract_config"]["reading"] == "answers"
    assert "answer" in res.directions.meta["read_position"]
    assert (res.table["heldout_paired_acc"] == 1.0).all()  # the planted behaviour is recovered
    prompt = extract_criterion(tiny, CRIT, config=_cfg(), train=TRAIN, heldout=HELD, progress=False)
    assert "reading" not in prompt.directions.meta["extract_config"]  # old folders stay reusable
