"""Can chosen and rejected be told apart from the text alone? Surface cues of a pair set.

DPO learns whatever separates chosen from rejected answers. If a surface cue does (the rejected
answers open with an apology, the chosen ones are longer), a model learns the cue. Two checks:

Surface features (:func:`surface_features`), one number per answer: ``n_words``; ``apology_opener``
(opens with "I'm sorry", "I apologise", "Unfortunately", "I can't", "As an AI", …);
``list_items`` (lines that start a bullet or a numbered item); ``markdown`` (headings, bold,
code fences); ``hedges`` (hedging words per 100 words); ``repetition`` (share of repeated word
3-grams); ``opening_<n-gram>`` (the answer opens with that word pair; only pairs seen at least
five times). For each, the ROC AUC of predicting "chosen" from it over all answers; the *cue
strength* ``max(AUC, 1 − AUC)`` says how well it separates either way.

Bag of words (:func:`bag_of_words_auc`): a logistic regression on word 1- and 2-gram presence,
cross-validated with both answers of a pair always in the same fold, gives an out-of-fold AUC; fitted
on everything, its largest coefficients are the n-grams that give the answer away.

Labels shuffled within pairs give AUCs near 0.5; a pair set with a planted cue gives ≈ 1.

Example:
    >>> pairs = [("Sure, here it is.", "Sorry, I can't.")] * 3
    >>> surface_features([c for c, _ in pairs])["apology_opener"].tolist()
    [0.0, 0.0, 0.0]
"""

import logging
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "SHORTCUT_THRESHOLD",
    "answer_pairs",
    "surface_features",
    "feature_aucs",
    "bag_of_words_auc",
    "shortcut_report",
]

logger = logging.getLogger(__name__)

#: A cue whose strength reaches this is reported as a shortcut.
SHORTCUT_THRESHOLD = 0.7
MIN_PAIRS = 10

_APOLOGY = re.compile(
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


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _opening(text: str) -> str:
    return " ".join(_words(text)[:2])


def surface_features(texts: Sequence[str]) -> pd.DataFrame:
    """One row per text: the surface features of the module docstring (without openings)."""
    rows = []
    for text in texts:
        words = _words(text)
        grams = list(zip(words, words[1:], words[2:]))
        rows.append(
            {
                "n_words": float(len(words)),
                "apology_opener": float(bool(_APOLOGY.match(text))),
                "list_items": float(len(_LIST.findall(text))),
                "markdown": float(len(_MARKDOWN.findall(text))),
                "hedges": 100.0 * sum(w in _HEDGES for w in words) / max(len(words), 1),
                "repetition": 1.0 - len(set(grams)) / len(grams) if grams else 0.0,
            }
        )
    return pd.DataFrame(rows)


def answer_pairs(records: Sequence[dict]) -> list[tuple[str, str]]:
    """``(chosen, rejected)`` texts of TRL preference records (standard or conversational)."""

    def text(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
        raise ValueError(
            f"an answer must be a string or a list of messages, got {type(value).__name__}"
        )

    return [(text(r["chosen"]), text(r["rejected"])) for r in records]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if np.all(scores == scores[0]):
        return 0.5
    return float(roc_auc_score(labels, scores))


def feature_aucs(pairs: Sequence[tuple[str, str]], *, min_count: int = 5) -> pd.DataFrame:
    """Per surface feature (and frequent opening word pair): AUC, strength and mean per side."""
    chosen = [c for c, _ in pairs]
    rejected = [r for _, r in pairs]
    feats = surface_features(chosen + rejected)
    openings = [_opening(t) for t in chosen + rejected]
    for gram, count in Counter(openings).most_common():
        if count < min_count or not gram:
            break
        feats[f"opening '{gram}'"] = [float(o == gram) for o in openings]
    n = len(pairs)
    labels = np.r_[np.ones(n), np.zeros(n)]
    rows = []
    for name in feats.columns:
        values = feats[name].to_numpy(dtype=float)
        auc = _auc(labels, values)
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


def bag_of_words_auc(
    pairs: Sequence[tuple[str, str]], *, folds: int = 5, seed: int = 0, top: int = 15
) -> dict:
    """Out-of-fold AUC of a word 1/2-gram logistic regression, and the n-grams that decide it."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    n = len(pairs)
    texts = [c for c, _ in pairs] + [r for _, r in pairs]
    labels = np.r_[np.ones(n), np.zeros(n)]
    vec = CountVectorizer(ngram_range=(1, 2), binary=True, min_df=2, token_pattern=r"[A-Za-z0-9']+")
    try:
        x = vec.fit_transform(texts)
    except ValueError:  # no n-gram occurs twice
        return {
            "auc": 0.5,
            "pair_accuracy": 0.5,
            "folds": folds,
            "chosen_ngrams": [],
            "rejected_ngrams": [],
        }
    perm = np.random.default_rng(seed).permutation(n)  # which pairs share a fold
    fold_groups = np.r_[perm, perm] % folds
    oof = np.zeros(2 * n)
    for train, test in GroupKFold(n_splits=folds).split(x, labels, fold_groups):
        clf = LogisticRegression(C=1.0, max_iter=2000)
        clf.fit(x[train], labels[train])
        oof[test] = clf.decision_function(x[test])
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, labels)
    names = vec.get_feature_names_out()
    order = np.argsort(clf.coef_[0])

    def listing(idx):
        return [{"ngram": str(names[i]), "weight": float(clf.coef_[0][i])} for i in idx]

    return {
        "auc": _auc(labels, oof),
        "pair_accuracy": float(np.mean(oof[:n] > oof[n:]) + 0.5 * np.mean(oof[:n] == oof[n:])),
        "folds": folds,
        "chosen_ngrams": listing(order[::-1][:top]),
        "rejected_ngrams": listing(order[:top]),
    }


def shortcut_report(
    records: Sequence[dict],
    *,
    folds: int = 5,
    seed: int = 0,
    threshold: float = SHORTCUT_THRESHOLD,
) -> dict:
    """Surface-feature AUCs and the bag-of-words AUC of a pair set, with the cues over ``threshold``.

    Raises:
        ValueError: Fewer than 10 usable pairs, or chosen equal to rejected in every pair.
    """
    pairs = answer_pairs(records)
    same = sum(c.strip() == r.strip() for c, r in pairs)
    if pairs and same == len(pairs):
        raise ValueError(
            "chosen and rejected are identical in every pair, so there is nothing to tell apart; "
            "make the pairs with a non-zero γ"
        )
    if same:
        logger.warning("%d of %d pairs have identical answers; they are left out", same, len(pairs))
        pairs = [(c, r) for c, r in pairs if c.strip() != r.strip()]
    if len(pairs) < max(MIN_PAIRS, folds):
        raise ValueError(
            f"the shortcut check needs at least {max(MIN_PAIRS, folds)} pairs with different "
            f"answers, got {len(pairs)}; make more pairs"
        )
    feats = feature_aucs(pairs)
    bow = bag_of_words_auc(pairs, folds=folds, seed=seed)
    cues = [
        {"feature": r["feature"], "strength": r["strength"], "higher_in": r["higher_in"]}
        for r in feats.to_dict(orient="records")
        if r["strength"] >= threshold
    ]
    if bow["auc"] >= threshold or 1 - bow["auc"] >= threshold:
        cues.append(
            {
                "feature": "bag of words",
                "strength": max(bow["auc"], 1 - bow["auc"]),
                "higher_in": "either",
            }
        )
    chosen_len = np.array([len(_words(c)) for c, _ in pairs], dtype=float)
    rejected_len = np.array([len(_words(r)) for _, r in pairs], dtype=float)
    return {
        "n_pairs": len(pairs),
        "n_identical_dropped": same,
        "threshold": threshold,
        "features": feats.to_dict(orient="records"),
        "bag_of_words": bow,
        "length_ratio_median": float(np.median((chosen_len + 1) / (rejected_len + 1))),
        "apology_opener_rate": {
            "chosen": float(np.mean([bool(_APOLOGY.match(c)) for c, _ in pairs])),
            "rejected": float(np.mean([bool(_APOLOGY.match(r)) for _, r in pairs])),
        },
        "shortcuts": cues,
    }
