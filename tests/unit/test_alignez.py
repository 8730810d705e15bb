import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from icon2_lens.alignez import apply as az_apply
from icon2_lens.alignez import fit as az_fit
from icon2_lens.alignez.apply import AlignEZEditor, alignez, filter_directions, generate_alignez
from icon2_lens.alignez.config import AlignEZConfig
from icon2_lens.alignez.edit import AlignEZEdit, check_edit, load_alignez
from icon2_lens.alignez.fit import fit_alignez, generate_self_pairs
from icon2_lens.alignez.subspace import fit_subspace, gated_edit
from icon2_lens.cli import main
from icon2_lens.model.chat import render_chat
from icon2_lens.model.generate import Decoding, Generation, generate
from icon2_lens.model.hooks import RowSelection
from icon2_lens.model.twin import block_modules, fast_twin
from icon2_lens.testing import tiny_model

QUERIES = [
    "tell me a story",
    "help me fix my code",
    "what is good food",
    "write a short poem about the cat",
]
# The tiny random model barely reads its prompt, so greedy pairs would be identical: sample.
FIT = AlignEZConfig(description_tokens=5, response_tokens=8, do_sample=True, n_edit_layers=2)
SAMPLE = Decoding(max_new_tokens=10, do_sample=True, seed=3)
TENSORS = ("help", "harm", "center", "query_center", "resid_norm")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The matrices here are tiny: a second intra-op thread buys nothing, and on a loaded machine
    # every OpenMP region then waits for a descheduled thread (≈ 7 ms per matmul instead of µs).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records():
    return generate_self_pairs(tiny_model(), QUERIES, FIT, progress=False)


@pytest.fixture(scope="module")
def fitted():
    return fit_alignez(tiny_model(), QUERIES, FIT, progress=False)


def _ids(gens):
    return [g.token_ids for g in gens]


def _prompts(model):
    return [render_chat(model.tokenizer, q) for q in QUERIES]


def _orthonormal(n_layers, k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.stack(
        [torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :k].T for _ in range(n_layers)]
    )
    return q.contiguous()


def _same_edit(a: AlignEZEdit, b: AlignEZEdit) -> None:
    for name in TENSORS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (
        a.layers == b.layers and a.config == b.config and a.model_fingerprint == b.model_fingerprint
    )
    assert json.loads(json.dumps(a.stats)) == json.loads(json.dumps(b.stats))


# ---------------------------------------------------------------------------------------------
# Pure steps


def test_fit_subspace_recovers_a_planted_axis():
    g = torch.Generator().manual_seed(0)
    n, d = 48, 32
    axis = F.normalize(torch.randn(d, generator=g), dim=0)
    base = 3 * torch.randn(n, d, generator=g)
    harm = base + 0.1 * torch.randn(n, d, generator=g)
    help_ = (
        base
        + (2.0 + 0.3 * torch.randn(n, 1, generator=g)) * axis
        + 0.1 * torch.randn(n, d, generator=g)
    )
    sub = fit_subspace(help_, harm, k=3)
    assert abs(float(sub.help[0] @ axis)) > 0.99
    diff = help_ - harm
    proj = (diff @ sub.help.T).mean(0)
    assert proj[0] > 0 and (proj >= 0).all()  # every direction oriented help-ward
    assert torch.allclose(sub.help @ sub.help.T, torch.eye(3), atol=1e-5)
    assert torch.equal(sub.harm, -sub.help)  # mirror rule
    assert sub.separation == 1.0 and 0.9 < sub.explained <= 1.0
    again = fit_subspace(help_.clone(), harm.clone(), k=3)
    assert torch.equal(again.help, sub.help) and torch.equal(again.harm, sub.harm)


def test_fit_subspace_harm_rule_subspace():
    g = torch.Generator().manual_seed(1)
    n, d = 40, 24
    planted = F.normalize(torch.randn(d, generator=g), dim=0)
    help_ = 0.1 * torch.randn(n, d, generator=g)
    harm = 0.1 * torch.randn(n, d, generator=g) + (3.0 + torch.randn(n, 1, generator=g)) * planted
    sub = fit_subspace(help_, harm, k=2, harm="subspace")
    shared = torch.cat([help_, harm]).mean(0)
    assert abs(float(sub.harm[0] @ planted)) > 0.95
    assert float(((harm - shared) @ sub.harm[0]).mean()) > 0  # points where the harm answers sit
    assert torch.allclose(sub.harm.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.equal(sub.harm, -sub.help)


def test_fit_subspace_rank_deficient_and_bad_input():
    one = fit_subspace(torch.tensor([[1.0, 2.0, 0.0]]), torch.zeros(1, 3), k=3)
    assert torch.allclose(one.help[0], F.normalize(torch.tensor([1.0, 2.0, 0.0]), dim=0))
    assert (one.help[1:] == 0).all() and (one.singular_values[1:] == 0).all()
    with pytest.raises(
        (ValueError, TypeError)
    ):  # jaxtyping's TypeCheckError when shapes are checked
        fit_subspace(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no contrast"):
        fit_subspace(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        fit_subspace(torch.full((2, 3), float("nan")), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown harm"):
        fit_subspace(torch.ones(2, 3), torch.zeros(2, 3), harm="both")
    with pytest.raises(ValueError, match="k must"):
        fit_subspace(torch.ones(2, 3), torch.zeros(2, 3), k=0)


@pytest.mark.parametrize("center", [True, False])
def test_filter_keeps_exactly_the_directions_with_cos_at_most_zero(center):
    n_layers, k, d = 2, 3, 16
    help_ = _orthonormal(n_layers, k, d)
    help_[1, 2] = 0.0  # beyond the data's rank: never kept
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(n_layers, d, generator=g)
    cfg = AlignEZConfig(k=k, center=center)
    edit = AlignEZEdit(
        model_name="toy",
        layers=(0, 1),
        help=help_,
        harm=-help_,
        center=torch.zeros(n_layers, d),
        query_center=mu,
        resid_norm=torch.ones(n_layers),
        config=cfg,
    )
    phi = torch.randn(30, n_layers, d, generator=g)
    help_mask, harm_mask = filter_directions(edit, phi)
    z = phi - mu if center else phi
    cos = F.cosine_similarity(z.unsqueeze(2), help_.unsqueeze(0), dim=-1)  # [n, layer, k]
    valid = help_.norm(dim=-1) > 0
    assert torch.equal(help_mask, (cos <= 0) & valid)
    assert 0 < int(help_mask.sum()) < int(valid.sum()) * 30  # some kept, some not
    assert torch.equal(harm_mask, valid.expand_as(harm_mask))  # harm_filter="always"
    expressed = replace(edit, config=replace(cfg, harm_filter="expressed"))
    _, harm_expr = filter_directions(expressed, phi)
    harm_cos = F.cosine_similarity(z.unsqueeze(2), (-help_).unsqueeze(0), dim=-1)
    assert torch.equal(harm_expr, (harm_cos >= 0) & valid)
    assert torch.equal(harm_expr, help_mask)  # mirror: both halves of an axis together


def test_gated_edit_gates():
    g = torch.Generator().manual_seed(2)
    d = 8
    eta = F.normalize(torch.randn(1, d, generator=g), dim=-1)
    theta = F.normalize(torch.randn(1, d, generator=g), dim=-1)
    c = torch.randn(d, generator=g)
    x = torch.randn(2, 5, d, generator=g) * 3
    kw = dict(center=c, tau=0.7, push=0.7, strength=1.0)
    off, on = torch.zeros(2, 1), torch.ones(2, 1)
    p = (x - c) @ eta[0]
    absent = x - (p.abs() + p).unsqueeze(-1) * eta[0]  # reflect: <x - c, eta> <= 0 everywhere
    assert torch.equal(
        gated_edit(absent, theta, eta, off, on, **kw), absent
    )  # ReLU gate: nothing to remove
    out = gated_edit(x, theta, eta, off, on, **kw)
    after = (out - c) @ eta[0]
    assert torch.allclose(
        after, torch.where(p > 0, torch.zeros_like(p), p), atol=1e-5
    )  # r = tau: removed exactly
    assert torch.equal(
        gated_edit(x, theta, eta, off, off, **kw), x
    )  # nothing kept, nothing changes
    pushed = gated_edit(x, theta, eta, on, off, **{**kw, "tau": 2.0, "push": 1.5})
    shift = (pushed - x) @ theta[0]
    assert torch.allclose(shift, 1.5 * torch.tanh(((x - c) @ theta[0]) / 2.0), atol=1e-5)
    assert torch.allclose(pushed - x, shift.unsqueeze(-1) * theta[0], atol=1e-5)  # only along theta
    mirror = gated_edit(x, theta, -theta, on, on, **kw)
    assert (((mirror - x) @ theta[0]) >= -1e-6).all()  # mirror: the net push is never harm-ward


def test_generated_positions_edit_from_the_last_prompt_token(tiny):
    cfg = AlignEZConfig(k=2, unit="absolute", gate_scale=1.0, center=False, positions="generated")
    edit = AlignEZEdit.synthetic(_orthonormal(1, 2, 16), layers=[1], config=cfg)
    editor = AlignEZEditor(tiny, edit, query_residuals=-edit.help[:, :1].clone())
    ((_, gate),) = editor.bind(RowSelection(), [0], prompt_len=4)
    x = torch.randn(1, 6, 16) * 2
    y = gate(x)
    assert torch.equal(y[:, :3], x[:, :3]) and not torch.equal(y[:, 3:], x[:, 3:])
    step = torch.randn(1, 1, 16) * 2
    assert not torch.equal(gate(step), step)  # a cached decoding step is always edited


# ---------------------------------------------------------------------------------------------
# Generation with the edit


def test_strength_zero_gives_exactly_the_plain_generation(tiny, fitted):
    base = _ids(generate(tiny, _prompts(tiny), SAMPLE))
    assert _ids(generate_alignez(tiny, QUERIES, fitted, SAMPLE, strength=0.0)) == base
    zero_cfg = replace(fitted, config=replace(fitted.config, strength=0.0))
    assert _ids(generate_alignez(tiny, QUERIES, zero_cfg, SAMPLE)) == base
    editor = AlignEZEditor(tiny, fitted, _prompts(tiny), strength=0.0)
    assert editor.hook_names == () and editor.bind(RowSelection(), [0, 1], 5) == []
    assert _ids(generate_alignez(tiny, QUERIES, fitted, SAMPLE, strength=20.0)) != base


def test_strength_changes_logits_and_residuals(tiny):
    cfg = AlignEZConfig(k=2, unit="absolute", gate_scale=1.0, center=False)
    edit = AlignEZEdit.synthetic(_orthonormal(1, 2, 16), layers=[1], config=cfg)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    phi = -edit.help[:, :1].clone()  # the query leans against the first help direction: it is kept
    seen = {}

    def grab(resid, hook):  # noqa: ARG001
        seen["resid"] = resid.detach().clone()

    base = tiny(ids)
    with tiny.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", grab)]):
        tiny(ids)
        plain_resid = seen["resid"]
        with alignez(tiny, edit, phi, strength=0.0):
            assert torch.equal(tiny(ids), base)
        with alignez(tiny, edit, phi, strength=3.0) as editor:
            edited = tiny(ids)
        edited_resid = seen["resid"]
    assert int(editor.help_kept[0]) >= 1
    assert not torch.allclose(edited, base)
    assert torch.equal(tiny(ids), base)  # untouched after the block
    shift = (edited_resid - plain_resid) @ edit.help[0].T  # [1, pos, k]
    p = plain_resid @ edit.help[0].T
    # help: tanh gate; mirror harm (-theta, always kept): ReLU of the harm-side projection, removed
    expected = 3.0 * (
        torch.tanh(p) * editor.help_mask[0, 0] + torch.relu(-p) * editor.harm_mask[0, 0]
    )
    assert torch.allclose(shift, expected, atol=1e-4)


def test_batched_rows_follow_their_own_masks(tiny):
    # Unedited, the tiny model ends every turn at once (greedy); rows whose query keeps directions
    # go on and finish at different steps, so rows leave the batch while the others are edited.
    cfg = AlignEZConfig(
        k=2, unit="absolute", gate_scale=1.0, center=False, harm_filter="expressed", strength=3.0
    )
    edit = AlignEZEdit.synthetic(_orthonormal(1, 2, 16, seed=1), layers=[1], config=cfg)
    t0, t1 = edit.help[0]
    phi = torch.stack([t0 + 0.5 * t1, -t0 + 0.3 * t1, -t0 - t1, t0 - t1]).view(4, 1, 16)
    greedy = Decoding(max_new_tokens=12)
    editor = AlignEZEditor(tiny, edit, query_residuals=phi)
    assert (
        len({tuple(m.flatten().tolist()) for m in editor.help_mask}) == 4
    )  # none, first, both, second
    together = generate(tiny, _prompts(tiny), greedy, editors=[editor])
    alone = [
        generate(
            tiny, [p], greedy, editors=[AlignEZEditor(tiny, edit, query_residuals=phi[i : i + 1])]
        )[0]
        for i, p in enumerate(_prompts(tiny))
    ]
    assert _ids(together) == _ids(alone)
    assert len({len(g.token_ids) for g in together}) >= 3  # rows finished at different steps
    assert _ids(generate(tiny, _prompts(tiny)[:1], greedy)) == [
        together[0].token_ids
    ]  # nothing kept: unedited


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_backends_and_cache_agree(tiny, fitted, positions):
    edit = replace(fitted, config=replace(fitted.config, positions=positions))
    outs = [
        _ids(
            generate(
                tiny,
                _prompts(tiny),
                replace(SAMPLE, use_cache=c),
                backend=b,
                editors=[AlignEZEditor(tiny, edit, _prompts(tiny), strength=20.0)],
            )
        )
        for b in ("fast", "bridge")
        for c in (True, False)
    ]
    assert all(o == outs[0] for o in outs)


def test_hooks_removed_after_an_exception(tiny, fitted, monkeypatch):
    phi = torch.zeros(1, len(fitted.layers), 16)
    with pytest.raises(RuntimeError, match="inside"), alignez(tiny, fitted, phi):
        raise RuntimeError("inside")

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(az_apply, "gated_edit", boom)
    for backend in ("fast", "bridge"):
        with pytest.raises(RuntimeError, match="boom"):
            generate_alignez(tiny, QUERIES, fitted, SAMPLE, backend=backend)
    with pytest.raises(RuntimeError, match="boom"), alignez(tiny, fitted, phi):
        tiny(torch.tensor([[1, 5, 6]]))
    assert not any(hp.fwd_hooks for hp in tiny.hook_dict.values())
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks
        for m in block_modules(tiny, fast_twin(tiny))
    )


# ---------------------------------------------------------------------------------------------
# Fitting, saving, loading


def test_fit_records_choices_and_is_deterministic(tiny, fitted):
    assert len(fitted.layers) == 2 and set(fitted.layers) <= set(fitted.stats["candidate_layers"])
    assert fitted.help.shape == (2, FIT.k, 16) and torch.equal(fitted.harm, -fitted.help)
    norms = fitted.help.norm(dim=-1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)
    st = fitted.stats
    assert st["n_queries"] == 4 and st["n_pairs"] + sum(st["dropped"].values()) == 4
    scores = {int(h.split(".")[1]): e["difference"] for h, e in st["per_layer"].items()}
    top = sorted(sorted(scores, key=scores.get, reverse=True)[:2])
    assert list(fitted.layers) == top  # the layers where help and harm differ most
    assert (fitted.tau() == FIT.gate_scale * fitted.resid_norm).all()
    _same_edit(fit_alignez(tiny, QUERIES, FIT, progress=False), fitted)


def test_drops_degenerate_and_identical_pairs(tiny, monkeypatch):
    tok = tiny.tokenizer

    def fake(model, prompts, decoding, seeds, batch_size):  # noqa: ARG001
        out = []
        for s in seeds:
            i, role = divmod(s, 4)
            text = {
                (0, 0): "",
                (1, 2): "the cat sat",
                (1, 3): "the cat sat",
                (2, 2): "a cat " * 12,
                (3, 2): "the cat is good and kind",
                (3, 3): "the dog is bad and rude",
            }.get((i, role), "be very kind")
            out.append(
                Generation(
                    text.strip(), tok(text.strip(), add_special_tokens=False)["input_ids"], True
                )
            )
        return out

    monkeypatch.setattr(az_fit, "_generate", fake)
    edit = fit_alignez(tiny, QUERIES, replace(FIT, k=3, n_edit_layers=1), progress=False)
    assert edit.stats["dropped"] == {"empty_description": 1, "identical": 1, "help_repetition": 1}
    assert edit.stats["n_pairs"] == 1 and [p["index"] for p in edit.stats["pairs"]] == [3]
    assert (edit.help[:, 1:] == 0).all()  # one pair: rank one
    with pytest.raises(ValueError, match="max_similarity"):
        fit_alignez(
            tiny, QUERIES, replace(FIT, similarity="raw", max_similarity=-1.0), progress=False
        )


def test_layer_choices(tiny, records, monkeypatch):
    monkeypatch.setattr(az_fit, "generate_self_pairs", lambda *a, **k: records)
    explicit = fit_alignez(tiny, QUERIES, replace(FIT, layers=(-1, 0)), progress=False)
    assert explicit.layers == (0, 2) and explicit.stats["layer_rule"] == "explicit"
    cand = fit_alignez(
        tiny, QUERIES, replace(FIT, candidate_layers=(1,), n_edit_layers=3), progress=False
    )
    assert cand.layers == (1,)
    sep = fit_alignez(
        tiny, QUERIES, replace(FIT, layer_rule="separation", n_edit_layers=1), progress=False
    )
    assert len(sep.layers) == 1
    sub = fit_alignez(tiny, QUERIES, replace(FIT, harm="subspace", center=False), progress=False)
    assert not torch.equal(sub.harm, -sub.help) and (sub.center == 0).all()


def test_save_load_round_trip_and_model_checks(tmp_path, tiny, fitted):
    path = fitted.save(tmp_path / "edit")
    back = load_alignez(path, tiny)
    _same_edit(back, fitted)
    cfg = json.loads((path / "alignez.json").read_text())
    assert (
        cfg["d_model"] == 16
        and cfg["hook_names"] == fitted.hook_names
        and "describe_help" in cfg["prompts"]
    )
    first = {f: (path / f).read_bytes() for f in ("alignez.safetensors", "alignez.json")}
    back.save(path)
    assert {f: (path / f).read_bytes() for f in first} == first  # byte-identical
    with pytest.raises(ValueError, match="d_model"):
        load_alignez(path, tiny_model(d_model=32))
    other = tiny_model(seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        load_alignez(path, other)
    load_alignez(path, other, check_fingerprint=False)
    with pytest.raises(ValueError, match="d_model"):
        AlignEZEditor(tiny_model(d_model=32), fitted, ["hello"])
    edit_l2 = replace(fitted, layers=(1, 2))
    with pytest.raises(ValueError, match="layer 2"):
        check_edit(edit_l2, tiny_model(n_layers=2), check_fingerprint=False)
    cfg["format_version"] = 99
    (path / "alignez.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version"):
        load_alignez(path)
    (path / "alignez.json").unlink()
    with pytest.raises(ValueError, match="not a saved AlignEZ edit"):
        load_alignez(path)


def test_out_writes_pairs_and_resumes(tmp_path, tiny, fitted, monkeypatch):
    out = tmp_path / "fit"
    edit = fit_alignez(tiny, QUERIES, FIT, progress=False, out=out)
    _same_edit(edit, fitted)
    lines = (out / "pairs.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2, 3]
    assert (out / "alignez.safetensors").is_file()
    _same_edit(load_alignez(out, tiny), fitted)
    (out / "pairs.jsonl").write_text("\n".join(lines[:2]) + "\n")  # interrupted after two queries
    _same_edit(fit_alignez(tiny, QUERIES, FIT, progress=False, out=out), fitted)

    def no_generation(*a, **k):
        raise AssertionError("resumed run generated again")

    monkeypatch.setattr(az_fit, "_generate", no_generation)
    _same_edit(fit_alignez(tiny, QUERIES, FIT, progress=False, out=out), fitted)
    with pytest.raises(ValueError, match="different settings"):
        fit_alignez(tiny, QUERIES, replace(FIT, response_tokens=9), progress=False, out=out)


def test_bad_input(tiny, fitted):
    for queries in ([], ["tell me", "  "]):
        with pytest.raises(ValueError, match="non-empty fit query"):
            fit_alignez(tiny, queries, FIT, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        fit_alignez(tiny, QUERIES, replace(FIT, layers=(5,)), progress=False)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            generate_alignez(tiny, QUERIES, fitted, strength=bad)
        with pytest.raises(ValueError, match="finite"):
            AlignEZConfig(strength=bad)
    with pytest.raises((ValueError, TypeError)):  # a runtime type checker rejects the Literal first
        AlignEZConfig(harm="both")
    with pytest.raises(ValueError, match="k must"):
        AlignEZConfig(k=0)
    with pytest.raises(ValueError, match="query residuals"):
        with alignez(tiny, fitted, torch.zeros(1, 5, 16)):
            pass
    with (
        pytest.raises(ValueError, match="one query per batch row"),
        alignez(tiny, fitted, torch.zeros(2, 2, 16)),
    ):
        tiny(torch.tensor([[1, 5, 6]]))
    with pytest.raises(ValueError, match="no instructions"):
        generate_alignez(tiny, [], fitted)


def test_cli(tmp_path, monkeypatch, capsys):
    import icon2_lens.model.load as load

    monkeypatch.setattr(load, "load_model", lambda name=None, **kw: tiny_model())  # noqa: ARG005
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n")
    out = tmp_path / "edit"
    fit = [
        "alignez",
        "fit",
        "--queries",
        str(queries),
        "--out",
        str(out),
        "--description-tokens",
        "5",
        "--response-tokens",
        "8",
        "--sample",
        "--n-layers",
        "1",
        "--no-progress",
    ]
    assert main(fit) == 0
    assert len(load_alignez(out).layers) == 1
    answers = tmp_path / "answers.jsonl"
    gen = [
        "alignez",
        "generate",
        "--edit",
        str(out),
        "--instructions",
        str(queries),
        "--out",
        str(answers),
        "--max-new-tokens",
        "6",
        "--strength",
        "2",
        "--no-progress",
    ]
    assert main(gen) == 0
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == QUERIES
    assert all(r["alignez_strength"] == 2.0 and "alignez_help_kept" in r for r in rows)
    capsys.readouterr()
    bad = [
        "alignez",
        "generate",
        "--edit",
        str(tmp_path / "none"),
        "--instructions",
        str(queries),
        "--out",
        str(answers),
    ]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a saved AlignEZ edit" in err[0]
