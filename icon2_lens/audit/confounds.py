"""How much of each preference direction the confound directions explain.

Per layer and criterion: the cosine of the preference direction with each confound direction
(:mod:`icon2_lens.directions.confounds`), and the share of its squared norm inside the subspace
all the confounds span together (``‖Qᵀu‖²``, 0 = untouched by every confound, 1 = a mix of them).

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> u = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=-1)
    >>> ds = DirectionSet(criterion="toy", layers=(0,), vectors=u, method="mean_diff")
    >>> c = {"length": DirectionSet(criterion="length", layers=(0,), vectors=torch.eye(1, 3), method="mean_diff")}
    >>> t = confound_cosines([ds], c)
    >>> round(float(t["cosine"].iloc[0]), 4), round(float(subspace_shares([ds], c)["share"].iloc[0]), 4)
    (0.7071, 0.5)
"""

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from icon2_lens.directions.orthogonal import confound_basis, subspace_share
from icon2_lens.directions.set import DirectionSet

__all__ = ["confound_cosines", "subspace_shares", "largest_confounds"]


def _shared_layers(ds: DirectionSet, confounds: Mapping[str, DirectionSet]) -> list[int]:
    layers = [x for x in ds.layers if all(x in c.layers for c in confounds.values())]
    if not layers:
        raise ValueError(f"the confounds share no layer with the {ds.criterion!r} directions")
    return layers


def confound_cosines(
    sets: Sequence[DirectionSet], confounds: Mapping[str, DirectionSet]
) -> pd.DataFrame:
    """Long table: criterion, layer, confound, cosine."""
    rows = []
    for ds in sets:
        for layer in _shared_layers(ds, confounds):
            for name, c in confounds.items():
                cos = torch.nn.functional.cosine_similarity(ds[layer], c[layer], dim=0)
                rows.append(
                    {
                        "criterion": ds.criterion,
                        "layer": layer,
                        "confound": name,
                        "cosine": float(cos),
                    }
                )
    return pd.DataFrame(rows)


def subspace_shares(
    sets: Sequence[DirectionSet], confounds: Mapping[str, DirectionSet]
) -> pd.DataFrame:
    """Long table: criterion, layer, share of the direction inside the span of all confounds."""
    rows = []
    for ds in sets:
        for layer in _shared_layers(ds, confounds):
            q = confound_basis(torch.stack([c[layer] for c in confounds.values()]))
            rows.append(
                {"criterion": ds.criterion, "layer": layer, "share": subspace_share(ds[layer], q)}
            )
    return pd.DataFrame(rows)


def largest_confounds(cosines: pd.DataFrame, layers: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Per criterion: the confound with the largest |cosine| over its given layers."""
    rows = []
    for crit, part in cosines.groupby("criterion", sort=False):
        inside = part[part["layer"].isin(list(layers.get(crit, part["layer"])))]
        if inside.empty:
            continue
        top = inside.loc[inside["cosine"].abs().idxmax()]
        rows.append(
            {
                "criterion": crit,
                "confound": top["confound"],
                "layer": int(top["layer"]),
                "cosine": float(top["cosine"]),
            }
        )
    return pd.DataFrame(rows)
