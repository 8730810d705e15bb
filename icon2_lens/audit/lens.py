"""What a direction promotes: read through the unembedding, and measured by steering.

Logit lens (:func:`logit_lens`): the unit direction ``u`` at a layer is passed through the final
norm and the unembedding, ``W_U · norm(u)``, as if it were the whole residual stream; the tokens
with the highest logits are the ones it promotes, the lowest the ones it suppresses. It reads
what the direction would say if it reached the output unchanged, which later layers need not
respect: :func:`steering_shift` measures the behaviour instead, the change of the next-token
distribution at the end of neutral prompts under ``+γ`` and ``−γ`` steering (KL divergence from
the unsteered distribution, and the tokens whose log-probability moves most on average).

Example:
    >>> import torch
    >>> from icon2_lens.testing import tiny_model
    >>> from icon2_lens.directions.set import DirectionSet
    >>> model = tiny_model()
    >>> ds = DirectionSet(criterion="toy", layers=(1,), vectors=torch.eye(1, 16), method="mean_diff")
    >>> t = logit_lens(model, ds, k=3)
    >>> list(t["side"].unique()), len(t)
    (['promoted', 'suppressed'], 6)
"""

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icon2_lens._types import Direction, LensModel
from icon2_lens.directions.set import DirectionSet
from icon2_lens.directions.steer import SteeringSpec, steer
from icon2_lens.model.chat import encode_prompts, pad_left, render_chat

__all__ = ["direction_logits", "logit_lens", "steering_shift"]


@torch.no_grad()
def direction_logits(model: LensModel, u: Direction) -> Float[Tensor, " d_vocab"]:
    """``W_U · norm(u)``: the logits the direction alone would produce (float32)."""
    x = u.to(next(model.parameters()).dtype).view(1, 1, -1)
    return model.unembed(model.ln_final(x))[0, 0].float().cpu()


def _token(tokenizer, tid: int) -> str:
    return tokenizer.decode([tid])


def logit_lens(
    model: LensModel, ds: DirectionSet, *, k: int = 10, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """Top-``k`` promoted and suppressed tokens of the direction at every (chosen) layer."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rows = []
    for layer in layers if layers is not None else ds.layers:
        logits = direction_logits(model, ds[layer])
        for side, values in (("promoted", logits), ("suppressed", -logits)):
            top = torch.topk(values, min(k, values.numel()))
            for rank, (v, tid) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                rows.append(
                    {
                        "criterion": ds.criterion,
                        "layer": int(layer),
                        "side": side,
                        "rank": rank + 1,
                        "token_id": int(tid),
                        "token": _token(model.tokenizer, tid),
                        "logit": float(v if side == "promoted" else -v),
                    }
                )
    return pd.DataFrame(rows)


@torch.no_grad()
def _last_logprobs(model: LensModel, rows: list[list[int]], batch_size: int) -> Tensor:
    out = []
    device = getattr(model.cfg, "device", None) or "cpu"
    for i in range(0, len(rows), batch_size):
        ids, mask = pad_left(model.tokenizer, rows[i : i + batch_size])
        logits = model(ids.to(device), attention_mask=mask.to(device))
        out.append(torch.log_softmax(logits[:, -1].double(), dim=-1).cpu())
    return torch.cat(out)


def steering_shift(
    model: LensModel,
    ds: DirectionSet,
    prompts: Sequence[str],
    *,
    layers: Sequence[int],
    gammas: Sequence[float],
    unit: str = "relative",
    k: int = 10,
    batch_size: int = 16,
) -> list[dict]:
    """Per γ: how steering moves the next-token distribution at the end of each chat prompt.

    Args:
        model: The model.
        ds: The direction set.
        prompts: User messages (rendered with the chat template and its generation prompt).
        layers: Steered layers.
        gammas: Strengths to try (e.g. ``[γ⁺, γ⁻]``).
        unit: Unit of γ (see :mod:`icon2_lens.directions.steer`).
        k: Tokens listed per direction of movement.
        batch_size: Prompts per forward pass.

    Returns:
        One dict per γ: ``gamma``, ``kl_mean`` / ``kl_max`` (KL(steered ‖ base) in nats over the
        prompts), ``top_up`` / ``top_down`` (tokens with the largest mean log-probability change).
    """
    if not prompts:
        raise ValueError("no prompts to steer")
    texts = [render_chat(model.tokenizer, p) for p in prompts]
    rows = encode_prompts(model.tokenizer, texts, max_len=getattr(model.cfg, "n_ctx", None))
    base = _last_logprobs(model, rows, batch_size)
    p_base = base.exp()
    out = []
    for gamma in gammas:
        spec = SteeringSpec(directions=ds, gamma=float(gamma), layers=list(layers), unit=unit)
        with steer(model, spec):
            moved = _last_logprobs(model, rows, batch_size)
        kl = (moved.exp() * (moved - base)).sum(-1)
        # weight the change by how likely the token is under either distribution, so that
        # shifts among tokens of vanishing probability do not dominate the lists
        delta = ((moved - base) * torch.maximum(moved.exp(), p_base)).mean(0)
        up = torch.topk(delta, k)
        down = torch.topk(-delta, k)

        def listing(top, sign):
            return [
                {
                    "token": _token(model.tokenizer, int(t)),
                    "token_id": int(t),
                    "change": sign * float(v),
                }
                for v, t in zip(top.values, top.indices)
            ]

        out.append(
            {
                "gamma": float(gamma),
                "layers": list(layers),
                "kl_mean": float(kl.mean()),
                "kl_max": float(kl.max()),
                "top_up": listing(up, 1.0),
                "top_down": listing(down, -1.0),
            }
        )
    return out
