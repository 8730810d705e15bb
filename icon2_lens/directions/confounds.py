"""Confound directions: what a preference direction might carry besides the preference.

Each confound is a contrast the package ships data for (``data/confounds.json``, written for the
project), turned into one direction per layer with the same machinery as the criteria
(:func:`~icon2_lens.directions.fit.fit_directions`, ``mean_diff``):

``length``
    Long vs short answers that say the same, to the same request.
``apology``
    An apology or refusal sentence ("I'm sorry, but I can't fully help with that.") before the short
    answer vs the short answer alone.
``refusal``
    Harmful vs harmless requests (the difference in means of the prompt's last-token residual).
``sentiment``
    Positive vs negative wording of the same answer.
``formality``
    Formal vs casual wording of the same answer.

Answers are read as the unsteered model reads any response (the residual averaged over the
answer's tokens, :func:`~icon2_lens.model.read.read_responses`); requests at the last token of the
chat prompt, where the criteria are read. Positive projection means "more like the first side".

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> sets = fit_confounds(tiny_model(), ["length"], layers=[0, 2])
    >>> sets["length"].layers, sets["length"].meta["kind"]
    ((0, 2), 'confound')
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from icon2_lens._config import check_names
from icon2_lens._types import LayerActs, LensModel
from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid
from icon2_lens.model.hooks import normalize_layers
from icon2_lens.model.load import model_fingerprint
from icon2_lens.model.read import read_responses

from .fit import fit_directions
from .set import DirectionSet

__all__ = ["CONFOUNDS", "ConfoundContrast", "confound_contrast", "check_confounds", "fit_confounds"]

CONFOUNDS: dict[str, str] = {
    "length": "long vs short answers to the same request",
    "apology": "an apology/refusal sentence before the answer vs the answer alone",
    "refusal": "harmful vs harmless requests",
    "sentiment": "positive vs negative wording of the same answer",
    "formality": "formal vs casual wording of the same answer",
}


@dataclass(frozen=True)
class ConfoundContrast:
    """The two sides of a confound: requests, and answers unless it is read on requests alone."""

    name: str
    requests_pos: tuple[str, ...]
    requests_neg: tuple[str, ...]
    answers_pos: tuple[str, ...] | None = None
    answers_neg: tuple[str, ...] | None = None

    @property
    def on_answers(self) -> bool:
        return self.answers_pos is not None


@lru_cache(maxsize=1)
def _data_text() -> str:
    return (
        resources.files("icon2_lens.directions").joinpath("data/confounds.json").read_text("utf-8")
    )


def check_confounds(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple, or a ``ValueError`` naming the known confounds."""
    return check_names(list(names), CONFOUNDS, "confound")


def confound_contrast(name: str) -> ConfoundContrast:
    """The shipped contrast data of one confound."""
    check_confounds([name])
    data = json.loads(_data_text())
    answers = data["answers"]
    if name == "length":
        req = tuple(a["request"] for a in answers)
        return ConfoundContrast(
            name, req, req, tuple(a["long"] for a in answers), tuple(a["short"] for a in answers)
        )
    if name == "apology":
        openers = data["apology_openers"]
        req = tuple(a["request"] for a in answers)
        pos = tuple(f"{openers[i % len(openers)]} {a['short']}" for i, a in enumerate(answers))
        return ConfoundContrast(name, req, req, pos, tuple(a["short"] for a in answers))
    if name == "refusal":
        return ConfoundContrast(
            name, tuple(data["requests"]["harmful"]), tuple(data["requests"]["harmless"])
        )
    key_pos, key_neg = ("positive", "negative") if name == "sentiment" else ("formal", "casual")
    rows = data[name]
    req = tuple(r["request"] for r in rows)
    return ConfoundContrast(
        name, req, req, tuple(r[key_pos] for r in rows), tuple(r[key_neg] for r in rows)
    )


def _activations(
    model: LensModel, c: ConfoundContrast, layers: list[int], site: str, batch_size: int
) -> tuple[LayerActs, LayerActs]:
    if c.on_answers:
        return tuple(
            read_responses(
                model,
                c.requests_pos,
                answers,
                layers=layers,
                site=site,
                read="mean",
                batch_size=batch_size,
                nll=False,
            ).readings
            for answers in (c.answers_pos, c.answers_neg)
        )
    tok = model.tokenizer
    acts = [
        collect_resid(
            model,
            [render_chat(tok, r) for r in reqs],
            layers=layers,
            site=site,
            batch_size=batch_size,
            progress=False,
        )
        for reqs in (c.requests_pos, c.requests_neg)
    ]
    return acts[0], acts[1]


def fit_confounds(
    model: LensModel,
    names: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
) -> dict[str, DirectionSet]:
    """One :class:`DirectionSet` per named confound, at ``layers`` (``None``: every layer)."""
    names = check_confounds(list(names))
    layer_list = normalize_layers(layers, model.cfg.n_layers)
    digest = hashlib.sha256(_data_text().encode()).hexdigest()[:16]
    out = {}
    for name in names:
        c = confound_contrast(name)
        pos, neg = _activations(model, c, layer_list, site, batch_size)
        vectors, stats = fit_directions(pos, neg, "mean_diff")
        out[name] = DirectionSet(
            criterion=name,
            layers=tuple(layer_list),
            vectors=vectors,
            site=site,
            method="mean_diff",
            stats=tuple(stats),
            meta={
                "kind": "confound",
                "description": CONFOUNDS[name],
                "n_pairs": int(pos.shape[0]),
                "read": "answer tokens, mean" if c.on_answers else "last prompt token",
                "data_sha256": digest,
                "model_fingerprint": model_fingerprint(model),
            },
        )
    return out
