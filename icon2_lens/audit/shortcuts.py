"""Can chosen and rejected be told apart from the text alone? Surface cues of a pair set.

DPO learns whatever separates chosen from rejected answers. If a surface cue does (the rejected
answers open with an apology, the chosen ones are longer), a model learns the cue. Two checks:

Surface features (:func:`~icon2_lens.judge.surface.surface_features`, shared with the surface
judges): length, apology opener, list items, markdown, hedges, repetition, and frequent opening
word pairs; for each, the ROC AUC of predicting "chosen" from it over all answers and the *cue
strength* ``max(AUC, 1 − AUC)`` (:func:`~icon2_lens.judge.surface.feature_aucs`).

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
from collections.abc import Sequence

import numpy as np

from icon2_lens.judge.surface import (
    feature_aucs,
    opens_with_apology,
    roc_auc,
    surface_features,
    words,
)
from icon2_lens.pairs.records import answer_pairs

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
        "auc": roc_auc(labels, oof),
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
    chosen_len = np.array([len(words(c)) for c, _ in pairs], dtype=float)
    rejected_len = np.array([len(words(r)) for _, r in pairs], dtype=float)
    return {
        "n_pairs": len(pairs),
        "n_identical_dropped": same,
        "threshold": threshold,
        "features": feats.to_dict(orient="records"),
        "bag_of_words": bow,
        "length_ratio_median": float(np.median((chosen_len + 1) / (rejected_len + 1))),
        "apology_opener_rate": {
            "chosen": float(np.mean([opens_with_apology(c) for c, _ in pairs])),
            "rejected": float(np.mean([opens_with_apology(r) for _, r in pairs])),
        },
        "shortcuts": cues,
    }
