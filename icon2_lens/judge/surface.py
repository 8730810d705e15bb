"""What the text of an answer shows on its surface, and judges that read only that.

Surface features (:func:`surface_features`), one number per answer: ``n_words``; ``apology_opener``
(opens with "I'm sorry", "I apologise", "Unfortunately", "I can't", "As an AI", …);
``list_items`` (lines that start a bullet or a numbered item); ``markdown`` (headings, bold,
code fences); ``hedges`` (hedging words per 100 words); ``repetition`` (share of repeated word
3-grams). :func:`feature_aucs` asks how well each of them, and each frequent opening word pair,
tells two sets of answers apart (ROC AUC; the *cue strength* ``max(AUC, 1 − AUC)``).

The surface judges read one feature each and nothing of the model, so they can never agree with
a direction by construction; they are the cues DPO would learn if chosen and rejected differ by
them:

===============  ==============================================================================
``apology``      1 if the answer does not open with an apology or an inability phrase, else 0
``repetition``   minus the share of repeated word 3-grams (0 = nothing repeats)
``length``       the number of words (a reading, not a quality: longer is "higher")
===============  ==============================================================================

Example:
    >>> surface_features(["Sure, here it is.", "Sorry, I can't."])["apology_opener"].tolist()
    [0.0, 1.0]
    >>> SurfaceJudge("apology").score(["hi"] * 2, ["Hello!", "I'm sorry, I can't."]).tolist()
    [1.0, 0.0]
"""

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .base import Scores, check_lengths

__all__ = [
    "APOLOGY_OPENER",
    "SURFACE_JUDGES",
    "SurfaceJudge",
    "words",
    "opens_with_apology",
    "surface_features",
    "feature_aucs",
    "feature_values",
    "opening",
    "roc_auc",
]

#: An answer that opens with an apology or a statement of inability.
APOLOGY_OPENER = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry|i apologi[sz]e|my apologies|unfortunately|i can'?t|"
    r"i cannot|i'?m unable|i am unable|i won'?t|i'?m not able|i am not able|as an ai)\b",
    re.IGNORECASE,
)
_LIST = re.compile(r"^\s*([-*•]|\d+[.)])\s+", re.MULTILINE)
_MARKDOWN = re.compile(r"(^\s*#{1,6}\s|\*\*|__|```)", re.MULTILINE)
_HEDGES = frozenset(
    "might may perhaps possibly probably likely maybe seems seem generally typically usually "
    "often somewhat arguably".split()
)
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes) of ``text``."""
    return _WORD.findall(text.lower())


def opens_with_apology(text: str) -> bool:
    """Whether ``text`` opens with an apology or an inability phrase (:data:`APOLOGY_OPENER`)."""
    return bool(APOLOGY_OPENER.match(text))


def opening(text: str) -> str:
    """The first two words of ``text`` (the ``opening '<words>'`` features)."""
    return " ".join(words(text)[:2])


def feature_values(texts: Sequence[str], feature: str) -> np.ndarray:
    """``[n]`` values of one feature of :func:`feature_aucs` (a surface feature or an opening)."""
    if feature.startswith("opening '") and feature.endswith("'"):
        gram = feature[len("opening '") : -1]
        return np.array([float(opening(t) == gram) for t in texts])
    table = surface_features(texts)
    if feature not in table:
        raise ValueError(f"unknown surface feature {feature!r}; use one of {', '.join(table)}")
    return table[feature].to_numpy(dtype=float)


def surface_features(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text: the surface features of the module docstring (without openings)."""
    rows = []
    for text in texts:
        ws = words(text)
        grams = list(zip(ws, ws[1:], ws[2:]))
        rows.append(
            {
                "n_words": float(len(ws)),
                "apology_opener": float(opens_with_apology(text)),
                "list_items": float(len(_LIST.findall(text))),
                "markdown": float(len(_MARKDOWN.findall(text))),
                "hedges": 100.0 * sum(w in _HEDGES for w in ws) / max(len(ws), 1),
                "repetition": 1.0 - len(set(grams)) / len(grams) if grams else 0.0,
            }
        )
    return pd.DataFrame(rows)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; 0.5 when every score is equal."""
    from sklearn.metrics import roc_auc_score

    if np.all(scores == scores[0]):
        return 0.5
    return float(roc_auc_score(labels, scores))


def feature_aucs(pairs: Sequence[tuple[str, str]], *, min_count: int = 5) -> pd.DataFrame:
    """Per surface feature (and frequent opening word pair): AUC, strength and mean per side.

    ``pairs`` are ``(chosen, rejected)`` texts; AUC > 0.5 means the feature is higher in chosen.
    Rows are sorted by strength, strongest first.
    """
    chosen = [c for c, _ in pairs]
    rejected = [r for _, r in pairs]
    feats = surface_features(chosen + rejected)
    openings = [opening(t) for t in chosen + rejected]
    for gram, count in Counter(openings).most_common():
        if count < min_count or not gram:
            break
        feats[f"opening '{gram}'"] = [float(o == gram) for o in openings]
    n = len(pairs)
    labels = np.r_[np.ones(n), np.zeros(n)]
    rows = []
    for name in feats.columns:
        values = feats[name].to_numpy(dtype=float)
        auc = roc_auc(labels, values)
        rows.append(
            {
                "feature": name,
                "auc": auc,
                "strength": max(auc, 1.0 - auc),
                "higher_in": "chosen" if auc > 0.5 else "rejected" if auc < 0.5 else "neither",
                "mean_chosen": float(values[:n].mean()),
                "mean_rejected": float(values[n:].mean()),
            }
        )
    return pd.DataFrame(rows).sort_values("strength", ascending=False, ignore_index=True)


#: Surface judge name -> (feature of :func:`surface_features`, sign, offset, description);
#: the score is ``offset + sign * feature``.
SURFACE_JUDGES: dict[str, tuple[str, float, float, str]] = {
    "apology": (
        "apology_opener",
        -1.0,
        1.0,
        '1 if the answer does not open with an apology or inability phrase ("I\'m sorry", '
        '"Unfortunately", "I can\'t", "As an AI", …), else 0; reads the text only',
    ),
    "repetition": (
        "repetition",
        -1.0,
        0.0,
        "minus the share of the answer's word 3-grams that repeat an earlier one; reads the text "
        "only; higher = less repetitive",
    ),
    "length": (
        "n_words",
        1.0,
        0.0,
        "the answer's number of words; reads the text only; a reading, not a quality "
        "(higher = longer)",
    ),
}


class SurfaceJudge:
    """A pointwise judge that reads one surface feature of the answer (see the module docstring).

    Args:
        name: ``apology``, ``repetition`` or ``length`` (a key of :data:`SURFACE_JUDGES`).

    Raises:
        ValueError: Unknown name.
    """

    kind: Literal["pointwise"] = "pointwise"

    def __init__(self, name: str) -> None:
        if name not in SURFACE_JUDGES:
            raise ValueError(
                f"unknown surface judge {name!r}; use one of {', '.join(SURFACE_JUDGES)}"
            )
        self.name = name
        self.feature, self.sign, self.offset, self.description = SURFACE_JUDGES[name]

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> Scores:
        if check_lengths(instructions, responses) == 0:
            return np.empty(0)
        values = surface_features(responses)[self.feature].to_numpy(dtype=np.float64)
        out = self.offset + self.sign * values
        out[[i for i, r in enumerate(responses) if not r.strip()]] = np.nan
        return out
