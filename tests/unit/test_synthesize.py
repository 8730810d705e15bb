import json

import pytest

from icon2_lens._files import read_jsonl
from icon2_lens.instructions.synthesize import SynthesisConfig, synthesize_raw, template_markers
from icon2_lens.model.chat import user_turn_template

CFG = SynthesisConfig(n=10, max_new_tokens=8, batch_size=4, seed=5)


def test_samples_continue_the_user_turn_prefix(tiny, monkeypatch):
    import icon2_lens.instructions.synthesize as syn

    seen = []
    real = syn.generate_rows

    def spy(model, rows, *a, **k):
        seen.extend(rows)
        return real(model, rows, *a, **k)

    monkeypatch.setattr(syn, "generate_rows", spy)
    raw = synthesize_raw(tiny, CFG, progress=False)
    prefix = user_turn_template(tiny.tokenizer).prefix
    assert prefix.endswith("<turn> user : ")
    want = tiny.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert all(row == want for row in seen) and len(seen) == 10
    assert [r["index"] for r in raw] == list(range(10))
    assert len({r["text"] for r in raw}) > 5  # seeded per sample: different texts
    for r in raw:
        assert "<end>" not in r["text"] and "<turn>" not in r["text"]
        assert r["finished"] or r["n_tokens"] == 8


def test_batch_size_does_not_change_samples_and_resume_continues(tiny, tmp_path):
    a = synthesize_raw(tiny, CFG, progress=False)
    b = synthesize_raw(
        tiny, SynthesisConfig(n=10, max_new_tokens=8, batch_size=3, seed=5), progress=False
    )
    assert a == b
    path = tmp_path / "raw.jsonl"
    synthesize_raw(
        tiny, SynthesisConfig(n=4, max_new_tokens=8, batch_size=4, seed=5), out=path, progress=False
    )
    resumed = synthesize_raw(tiny, CFG, out=path, progress=False)
    assert resumed == a
    assert [r["index"] for r in read_jsonl(path)[1:]] == list(range(10))
    with pytest.raises(ValueError, match="different settings"):
        synthesize_raw(
            tiny, SynthesisConfig(n=10, max_new_tokens=8, seed=6), out=path, progress=False
        )


def test_markers_cover_template_pieces(tiny):
    markers = template_markers(tiny.tokenizer)
    assert "<turn>" in markers and "<end>" in markers


def test_samples_of_another_model_are_refused(tiny, tmp_path):
    """Finding 5: the raw file's header records the model, so another one cannot resume it."""
    from icon2_lens.model.load import model_fingerprint
    from icon2_lens.testing import tiny_model

    path = tmp_path / "raw.jsonl"
    small = SynthesisConfig(n=2, max_new_tokens=4, batch_size=2, seed=5)
    synthesize_raw(tiny, small, out=path, progress=False)
    assert read_jsonl(path)[0]["model_fingerprint"] == model_fingerprint(tiny)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"differences in: model_fingerprint, i.e. another model"):
        synthesize_raw(tiny_model(seed=1), small, out=path, progress=False)
    assert path.read_bytes() == before
    # a header without a fingerprint (an older icon2-lens) cannot vouch for the model either
    header, *rows = read_jsonl(path)
    del header["model_fingerprint"]
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    with pytest.raises(ValueError, match="model_fingerprint"):
        synthesize_raw(tiny, small, out=path, progress=False)
