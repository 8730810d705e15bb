"""What did DPO move? The residual change of a trained model, read against the directions.

On the same held-out instructions (chat prompt, no system prompt, last token), the mean residual
of the trained model minus that of the base model is compared, per layer, with each preference
direction: its cosine, and the projection of the change on the direction in units of the base
model's mean residual norm. A positive cosine means training moved the model towards the
criterion's positive prompt.

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(0,), vectors=torch.eye(1, 3), method="mean_diff")
    >>> base = torch.zeros(4, 1, 3); trained = base + torch.tensor([2.0, 0.0, 0.0])
    >>> shift_table([ds], base, trained)["cosine"].tolist()
    [1.0]
"""

from collections.abc import Sequence

import pandas as pd
import torch

from icon2_lens._types import LayerActs, LensModel
from icon2_lens.directions.set import DirectionSet
from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid

__all__ = ["prompt_activations", "shift_table"]


def prompt_activations(
    model: LensModel,
    instructions: Sequence[str],
    *,
    layers: Sequence[int],
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> LayerActs:
    """Last-token residual of each instruction's chat prompt (no system prompt)."""
    texts = [render_chat(model.tokenizer, d) for d in instructions]
    return collect_resid(
        model, texts, layers=layers, site=site, batch_size=batch_size, progress=progress
    )


def shift_table(sets: Sequence[DirectionSet], base: LayerActs, trained: LayerActs) -> pd.DataFrame:
    """Per criterion and layer: cosine of the mean change (trained − base) with the direction.

    ``base`` and ``trained`` hold the same instructions at the same layers, those of every set.
    """
    if base.shape != trained.shape:
        raise ValueError(f"base {tuple(base.shape)} and trained {tuple(trained.shape)} differ")
    change = (trained - base).mean(0)  # [layer, d]
    norm = base.norm(dim=-1).mean(0)  # [layer]
    rows = []
    for ds in sets:
        if change.shape[0] != len(ds.layers):
            raise ValueError(
                f"the activations do not hold the {len(ds.layers)} layers of {ds.criterion!r}"
            )
        for j, layer in enumerate(ds.layers):
            c = change[j]
            rows.append(
                {
                    "criterion": ds.criterion,
                    "layer": int(layer),
                    "cosine": float(torch.nn.functional.cosine_similarity(c, ds[layer], dim=0)),
                    "projection_rel": float(c @ ds[layer] / norm[j])
                    if norm[j] > 0
                    else float("nan"),
                    "change_norm_rel": float(c.norm() / norm[j]) if norm[j] > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows)
