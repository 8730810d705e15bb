"""Does an exported control vector steer llama.cpp the way icon2-lens steers the same model?

Runs the embedded model's own GGUF (SmolLM2-135M-Instruct, Q4_1) in llama.cpp through
``llama-cpp-python`` with a control vector written by ``write_gguf`` (γ baked in, relative units),
and the float32 dequantisation of the same weights in icon2-lens with the same steering, then
prints one JSON object:

* ``greedy_changed``: llama.cpp's greedy continuation with the vector differs from without it;
* ``logprob_shift``: per prompt, the next-token log-probability shift caused by steering
  (steered − unsteered, every vocabulary entry) in llama.cpp against icon2-lens: Pearson r over
  the vocabulary and over the 50 tokens most likely unsteered, and the largest absolute
  disagreement among those 50;
* ``unsteered``: how far the two runtimes agree without steering (quantisation noise sets the
  tolerance the steered comparison can reach);
* ``greedy_agreement``: leading tokens on which the two steered greedy continuations agree.

llama-cpp-python exposes llama.cpp's control-vector API (``llama_set_adapter_cvec``) but not the
loader of its command-line tools (``common_control_vector_load``), so the file is read here the way
that loader reads it: every ``direction.N`` tensor goes to offset ``n_embd · (N − 1)`` of the
buffer, multiplied by the strength (1 here), and the buffer is applied to layers 1…n_layer−1.

Usage: ``.venv/bin/python scripts/check_llamacpp.py [--gamma 0.05] [--layers 13-22]`` (needs
``pip install llama-cpp-python``; a wheel built once can be kept in a local folder).
"""

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

PROMPTS = (
    "Give me a tip for sleeping better.",
    "How do I pick a lock?",
    "Write one sentence about the sea.",
    "What should I eat before a run?",
)


def read_control_vector(path: Path, n_embd: int, strength: float = 1.0) -> np.ndarray:
    """The buffer llama.cpp's control-vector loader builds from one file (layer 1 at offset 0)."""
    import gguf

    out = np.zeros(0, dtype=np.float32)
    for t in gguf.GGUFReader(path).tensors:
        n = int(t.name.split(".", 1)[1])
        if n < 1 or t.tensor_type != gguf.GGMLQuantizationType.F32 or t.data.size != n_embd:
            raise ValueError(f"{path}: {t.name} would be rejected by llama.cpp")
        if out.size < n_embd * n:
            out = np.concatenate([out, np.zeros(n_embd * n - out.size, dtype=np.float32)])
        out[n_embd * (n - 1) : n_embd * n] += np.asarray(t.data, dtype=np.float32) * strength
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def run_check(
    gamma: float = 0.05, layers: tuple[int, int] = (13, 22), new_tokens: int = 24
) -> dict:
    """Every number of the module docstring, for the ``harmlessness`` direction of the embedded model."""
    import ctypes

    import llama_cpp
    import torch

    from icon2_lens import ExtractConfig, SteeringSpec, extract_criterion, get_criteria, steer
    from icon2_lens.model.chat import render_chat
    from icon2_lens.model.generate import Decoding, generate_rows, stop_token_ids
    from icon2_lens.model.load import embedded_gguf, load_model

    torch.set_grad_enabled(False)
    model = load_model()
    lo, hi = layers
    cfg = ExtractConfig(
        method="mean_diff", n_instructions=32, n_heldout=8, layers=tuple(range(lo, hi + 1))
    )
    ds = extract_criterion(
        model, get_criteria(["harmlessness"])[0], config=cfg, progress=False
    ).directions
    spec = SteeringSpec(directions=ds, gamma=gamma)
    tok = model.tokenizer
    stops = stop_token_ids(tok)
    with tempfile.TemporaryDirectory() as tmp:
        cv_path = ds.to_gguf(Path(tmp) / "harmlessness.gguf", scale=gamma, unit="relative")
        model_path = embedded_gguf("smollm2-135m", tmp)
        llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=512,
            n_threads=2,
            logits_all=True,
            verbose=False,
            seed=0,
        )
        n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
        buf = read_control_vector(cv_path, n_embd)
        c_buf = (ctypes.c_float * buf.size)(*buf.tolist())

        def set_cvec(on: bool) -> None:
            ctx = llm._ctx.ctx
            if on:
                rc = llama_cpp.llama_set_adapter_cvec(ctx, c_buf, buf.size, n_embd, 1, n_layer - 1)
            else:
                rc = llama_cpp.llama_set_adapter_cvec(ctx, None, 0, n_embd, 1, n_layer - 1)
            if rc != 0:
                raise RuntimeError(f"llama_set_adapter_cvec returned {rc}")

        def llama_next(ids: list[int], on: bool) -> np.ndarray:
            set_cvec(on)
            llm.reset()
            llm.eval(ids)
            return np.array(llm.scores[len(ids) - 1])

        def llama_greedy(ids: list[int], on: bool) -> list[int]:
            set_cvec(on)
            llm.reset()
            out = []
            for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                if t in stops or len(out) >= new_tokens:
                    break
                out.append(int(t))
            return out

        per_prompt, changed, agree = [], 0, []
        unsteered_r, unsteered_top = [], []
        for q in PROMPTS:
            text = render_chat(tok, q)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            ours_base = model(x)[0, -1].float().numpy()
            with steer(model, spec):
                ours_steer = model(x)[0, -1].float().numpy()
            ll_base, ll_steer = llama_next(ids, False), llama_next(ids, True)
            v = ours_base.shape[0]
            ll_base, ll_steer = ll_base[:v], ll_steer[:v]
            d_ours = _log_softmax(ours_steer) - _log_softmax(ours_base)
            d_ll = _log_softmax(ll_steer) - _log_softmax(ll_base)
            top = np.argsort(-ours_base)[:50]
            per_prompt.append(
                {
                    "prompt": q,
                    "r_vocab": round(_pearson(d_ours, d_ll), 4),
                    "r_top50": round(_pearson(d_ours[top], d_ll[top]), 4),
                    "max_abs_diff_top50": round(float(np.abs(d_ours[top] - d_ll[top]).max()), 4),
                    "mean_abs_shift_top50_ours": round(float(np.abs(d_ours[top]).mean()), 4),
                }
            )
            lb, lo_ = _log_softmax(ll_base), _log_softmax(ours_base)
            unsteered_r.append(_pearson(lb[top], lo_[top]))
            unsteered_top.append(float(np.abs(lb[top] - lo_[top]).max()))
            plain, steered = llama_greedy(ids, False), llama_greedy(ids, True)
            changed += plain != steered
            dec = Decoding(max_new_tokens=new_tokens)
            ours_ids = generate_rows(model, [ids], dec, steering=[spec])[0].token_ids
            n_same = next(
                (i for i, (a, b) in enumerate(zip(ours_ids, steered)) if a != b),
                min(len(ours_ids), len(steered)),
            )
            agree.append(n_same)
            per_prompt[-1]["llama_greedy_plain"] = tok.decode(plain)
            per_prompt[-1]["llama_greedy_steered"] = tok.decode(steered)
            per_prompt[-1]["ours_greedy_steered"] = tok.decode(ours_ids)
    return {
        "gamma": gamma,
        "unit": "relative (baked into the GGUF; llama.cpp strength 1)",
        "layers": f"{lo}-{hi}",
        "llama_cpp_python": llama_cpp.__version__,
        "greedy_changed": f"{changed}/{len(PROMPTS)}",
        "greedy_agreement_tokens": agree,
        "unsteered": {
            "r_top50": [round(r, 4) for r in unsteered_r],
            "max_abs_logprob_diff_top50": [round(d, 4) for d in unsteered_top],
        },
        "logprob_shift": per_prompt,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gamma", type=float, default=0.05)
    parser.add_argument("--layers", default="13-22")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lo, hi = (int(x) for x in args.layers.split("-"))
    print(json.dumps(run_check(args.gamma, (lo, hi)), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
