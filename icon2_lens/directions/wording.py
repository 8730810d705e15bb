"""Concept or wording? Directions scored on contrast prompts that say the same in other words.

A criterion's direction is meant to encode the criterion, not the words of its two system
prompts. The check reads held-out instructions under **other wordings** of the same contrast
(four per built-in criterion ship with the package, in ``data/wordings.json``; users add their
own in a TOML/JSON file) and measures, per layer, the paired accuracy of the direction: the
fraction of instructions whose contrast ``h⁺_w − h⁻_w`` under wording ``w`` projects positively.
A layer where some wording falls below the threshold (0.9 by default), or reverses (< 0.5),
reads the wording: extraction flags it and the layer recommendation avoids it.

:func:`pooled_generalisation` asks whether averaging the contrast over several wordings helps:
for each wording in turn, a direction is fitted on the contrasts averaged over all the *other*
wordings (the criterion's own prompts included) and scored on the held-out wording, on
instructions it was not fitted on, side by side with the direction fitted on the criterion's own
prompts alone.

Example:
    >>> import torch
    >>> from icon2_lens.directions.set import DirectionSet
    >>> ds = DirectionSet(criterion="toy", layers=(0, 1), vectors=torch.eye(2, 4), method="mean_diff")
    >>> neg = torch.zeros(5, 2, 4); pos = neg.clone(); pos[:, 0, 0] = 1.0; pos[:, 1, 0] = 1.0
    >>> t = wording_accuracy(ds, {"w": (pos, neg)})
    >>> t["paired_acc"].tolist(), flagged_layers(t)
    ([1.0, 0.0], [1])
"""

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import torch

from icon2_lens._files import read_utf8
from icon2_lens._types import LayerActs, LensModel

from .contrast import contrast_activations
from .criteria import Criterion
from .fit import fit_directions
from .set import DirectionSet

__all__ = [
    "Wording",
    "WORDING_THRESHOLD",
    "builtin_wordings",
    "load_wordings_file",
    "wording_activations",
    "wording_accuracy",
    "wording_summary",
    "flagged_layers",
    "pooled_generalisation",
]

#: Paired accuracy under another wording below which a layer is said to read the wording.
WORDING_THRESHOLD = 0.9

Contrasts = tuple[LayerActs, LayerActs]


@dataclass(frozen=True, kw_only=True)
class Wording:
    """Another positive/negative system-prompt pair for the same criterion."""

    positive: str
    negative: str
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("positive", "negative"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"wording field {field!r} must be a non-empty string")
        if self.positive.strip() == self.negative.strip():
            raise ValueError(f"wording {self.name!r}: positive and negative prompts are identical")

    def as_criterion(self, criterion: str) -> Criterion:
        return Criterion(name=criterion, positive=self.positive, negative=self.negative)


def _parse(items: object, where: str) -> dict[str, tuple[Wording, ...]]:
    if not isinstance(items, Mapping):
        raise ValueError(f"{where}: expected a table of criterion -> list of wordings")
    out: dict[str, tuple[Wording, ...]] = {}
    for criterion, rows in items.items():
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{where}: wordings of {criterion!r} must be a non-empty list")
        parsed = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or not {"positive", "negative"} <= set(row):
                raise ValueError(
                    f"{where}: wording #{i + 1} of {criterion!r} needs 'positive' and 'negative'"
                )
            unknown = set(row) - {"positive", "negative", "name"}
            if unknown:
                raise ValueError(
                    f"{where}: wording #{i + 1} of {criterion!r} has unknown field(s) {sorted(unknown)}"
                )
            parsed.append(
                Wording(
                    name=str(row.get("name") or f"w{i + 1}"),
                    positive=row["positive"],
                    negative=row["negative"],
                )
            )
        names = [w.name for w in parsed]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: duplicate wording names for {criterion!r}: {names}")
        out[str(criterion)] = tuple(parsed)
    return out


def builtin_wordings(
    criterion: str | None = None,
) -> dict[str, tuple[Wording, ...]] | tuple[Wording, ...]:
    """The shipped wordings: all of them (``criterion=None``) or one criterion's (``()`` if none)."""
    text = (
        resources.files("icon2_lens.directions").joinpath("data/wordings.json").read_text("utf-8")
    )
    table = _parse(json.loads(text)["wordings"], "built-in wordings")
    return table if criterion is None else table.get(criterion, ())


def load_wordings_file(path: str | Path) -> dict[str, tuple[Wording, ...]]:
    """Read user wordings: a TOML/JSON file with a table ``wordings`` of criterion -> list.

    TOML::

        [[wordings.honesty]]
        name = "candid"
        positive = "You are a candid assistant."
        negative = "You are an evasive assistant."

    Raises:
        ValueError: Missing or unreadable file, wrong structure, empty or identical prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"wordings file {str(path)!r} does not exist; check the path (TOML [[wordings.<criterion>]] "
            "tables with positive and negative)"
        )
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(read_utf8(path))
        elif path.suffix.lower() == ".json":
            data = json.loads(read_utf8(path))
        else:
            raise ValueError(f"wordings file {str(path)!r} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot parse wordings file {str(path)!r}: {e}") from e
    if not isinstance(data, Mapping) or "wordings" not in data:
        raise ValueError(f"wordings file {str(path)!r} needs a top-level 'wordings' table")
    return _parse(data["wordings"], str(path))


def wording_activations(
    model: LensModel,
    criterion: str,
    wordings: Sequence[Wording],
    instructions: Sequence[str],
    *,
    layers: Sequence[int],
    site: str = "resid_post",
    batch_size: int = 16,
    backend: str = "fast",
    progress: bool = False,
) -> dict[str, Contrasts]:
    """Wording name -> last-token activations ``(pos, neg)`` of every instruction under it."""
    if not wordings:
        raise ValueError(f"no wordings for criterion {criterion!r}")
    return {
        w.name: contrast_activations(
            model,
            w.as_criterion(criterion),
            instructions,
            layers=layers,
            site=site,
            batch_size=batch_size,
            progress=progress,
            backend=backend,
        )
        for w in wordings
    }


def wording_accuracy(ds: DirectionSet, contrasts: Mapping[str, Contrasts]) -> pd.DataFrame:
    """Per wording and layer of ``ds``: paired accuracy and mean projected contrast."""
    rows = []
    for name, (pos, neg) in contrasts.items():
        proj = ds.project(pos - neg)
        for j, layer in enumerate(ds.layers):
            rows.append(
                {
                    "criterion": ds.criterion,
                    "wording": name,
                    "layer": layer,
                    "paired_acc": float((proj[:, j] > 0).float().mean()),
                    "mean_gap": float(proj[:, j].mean()),
                }
            )
    return pd.DataFrame(rows)


def wording_summary(table: pd.DataFrame, threshold: float = WORDING_THRESHOLD) -> pd.DataFrame:
    """Per layer: the lowest paired accuracy over wordings, which wording, and the flag."""
    rows = []
    for layer, part in table.groupby("layer", sort=True):
        worst = part.loc[part["paired_acc"].idxmin()]
        rows.append(
            {
                "layer": int(layer),
                "wording_min_acc": float(worst["paired_acc"]),
                "wording_worst": str(worst["wording"]),
                "wording_flag": bool(worst["paired_acc"] < threshold),
                "wording_reversed": bool(worst["paired_acc"] < 0.5),
            }
        )
    return pd.DataFrame(rows)


def flagged_layers(table: pd.DataFrame, threshold: float = WORDING_THRESHOLD) -> list[int]:
    """Layers where some wording's paired accuracy is below ``threshold``."""
    s = wording_summary(table, threshold)
    return [int(layer) for layer in s.loc[s["wording_flag"], "layer"]]


def pooled_generalisation(
    contrasts: Mapping[str, Contrasts],
    *,
    own: str,
    layers: Sequence[int],
    method: str = "mean_diff",
    seed: int = 0,
) -> pd.DataFrame:
    """Leave one wording out: does a direction fitted over several wordings reach an unseen one?

    The instructions are split in two halves (seeded). For each wording ``w``: a direction fitted
    on the first half under the criterion's own prompts alone (``acc_own``), and one fitted on the
    first half's contrasts averaged over every wording but ``w`` (``acc_pooled``), are scored on
    the second half under ``w``. For ``w = own`` the first is the in-distribution accuracy.

    Args:
        contrasts: Wording -> ``(pos, neg)`` activations of the same instructions, own prompts
            included under the key ``own``.
        own: The key of the criterion's own prompts.
        layers: The layers of the activations, in order.
        method: Fitting method (see :mod:`icon2_lens.directions.fit`).
        seed: Seed of the split.

    Returns:
        One row per held-out wording and layer: ``acc_own`` and ``acc_pooled``.
    """
    if own not in contrasts or len(contrasts) < 3:
        raise ValueError("need the own prompts and at least two other wordings")
    n = next(iter(contrasts.values()))[0].shape[0]
    if n < 4:
        raise ValueError(f"need at least 4 instructions to split, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit_i, test_i = perm[: n // 2], perm[n // 2 :]
    u_own, _ = fit_directions(contrasts[own][0][fit_i], contrasts[own][1][fit_i], method)
    rows = []
    for name, (p_w, n_w) in contrasts.items():
        others = [c for k, c in contrasts.items() if k != name]
        pos = torch.stack([p[fit_i] for p, _ in others]).mean(0)
        neg = torch.stack([q[fit_i] for _, q in others]).mean(0)
        u_pool, _ = fit_directions(pos, neg, method)
        diff = p_w[test_i] - n_w[test_i]
        acc_own = ((diff * u_own).sum(-1) > 0).float().mean(0)
        acc_pool = ((diff * u_pool).sum(-1) > 0).float().mean(0)
        for j, layer in enumerate(layers):
            rows.append(
                {
                    "wording": name,
                    "layer": int(layer),
                    "acc_own": float(acc_own[j]),
                    "acc_pooled": float(acc_pool[j]),
                }
            )
    return pd.DataFrame(rows)
