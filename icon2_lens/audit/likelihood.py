"""Can the model itself tell chosen from rejected by how likely it finds them? The likelihood cue.

A surface cue is read off the text (:mod:`~icon2_lens.audit.shortcuts`); this one is read by the
model that DPO will train. Steering pushes the rejected answer away from what the model would
write, so it is usually less likely to the model than the chosen one, and more so when the chosen
answer is the model's own unsteered (greedy) answer. DPO's implicit reward of an answer is
``β · (log π(answer) − log π_ref(answer))``, so a policy can rank such pairs correctly without
learning anything about the criterion, by sharpening its own distribution. Three numbers say how
much of that is on offer:

* ``logp_auc``: ROC AUC of predicting "chosen" from the mean log-probability per answer token
  under the model, over all answers (its strength ``max(AUC, 1 − AUC)`` is comparable with the
  surface cues' and the same threshold applies);
* ``chosen_likelier``: the share of pairs whose chosen answer is likelier per token than its
  rejected one;
* ``sharpening_accuracy``: the DPO reward accuracy of a policy that is the model at
  ``temperature`` < 1 (logits divided by it) against the model as reference, i.e. the share of
  pairs with ``Σ log p_T(chosen) − Σ log p(chosen) > Σ log p_T(rejected) − Σ log p(rejected)``.
  A reward accuracy at or below this level is one the policy could reach by growing more
  confident alone; only what lies above it says the pairs taught something else.

Example:
    >>> from icon2_lens.testing import tiny_model
    >>> recs = [{"prompt": [{"role": "user", "content": "tell me a story"}],
    ...          "chosen": "the cat sat", "rejected": "a dog"}] * 10
    >>> sorted(likelihood_report(tiny_model(), recs, progress=False))[:3]
    ['chosen_likelier', 'chosen_nll', 'higher_in']
"""

import logging
from collections.abc import Sequence

import numpy as np

from icon2_lens._types import LensModel
from icon2_lens.judge.surface import roc_auc
from icon2_lens.model.read import read_responses
from icon2_lens.pairs.records import answer_pairs, prompt_texts

from .shortcuts import SHORTCUT_THRESHOLD

__all__ = ["SHARPENING_TEMPERATURE", "likelihood_report"]

logger = logging.getLogger(__name__)

#: The temperature of the sharpened policy whose reward accuracy is reported.
SHARPENING_TEMPERATURE = 0.9


def likelihood_report(
    model: LensModel,
    records: Sequence[dict],
    *,
    temperature: float = SHARPENING_TEMPERATURE,
    threshold: float = SHORTCUT_THRESHOLD,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """How the model's own likelihood separates the chosen and rejected answers of a pair set.

    Args:
        model: The model DPO starts from (the reference).
        records: Pair records in TRL's conversational format (``prompt`` as chat messages;
            ``chosen`` and ``rejected`` as messages or text).
        temperature: Temperature of the sharpened policy (below 1).
        threshold: Strength at which the likelihood counts as a shortcut (the surface cues').
        batch_size: Rows per forward pass.
        progress: Show a progress bar.

    Returns:
        ``n_pairs``, ``logp_auc``, ``strength``, ``higher_in``, ``chosen_likelier``,
        ``sharpening_accuracy``, ``temperature``, ``chosen_nll`` and ``rejected_nll`` (means per
        token), ``threshold`` and ``shortcut`` (whether the strength or the sharpening accuracy
        reaches the threshold).

    Pairs with an empty answer, or the same answer on both sides, are left out (as DPO's reward
    accuracy counts a tie as wrong, they would only blur the levels).

    Raises:
        ValueError: Standard-format (string) prompts, no pair with two different non-empty
            answers, or a temperature outside (0, 1).
    """
    if not 0 < temperature < 1:
        raise ValueError(f"temperature must be in (0, 1) to sharpen, got {temperature!r}")
    if any(isinstance(r.get("prompt"), str) for r in records):
        raise ValueError(
            "the likelihood check reads conversational pairs (prompt as chat messages, which it "
            "renders with the model's chat template, as DPO does); these are standard-format "
            "strings, so it is skipped"
        )
    pairs = answer_pairs(records)
    prompts = prompt_texts(records)
    use = [
        i for i, (c, r) in enumerate(pairs) if c.strip() and r.strip() and c.strip() != r.strip()
    ]
    if not use:
        raise ValueError("no pair has two different non-empty answers; make the pairs first")
    if len(use) < len(pairs):
        logger.info(
            "likelihood: %d pairs with an empty or identical answer left out", len(pairs) - len(use)
        )
    n = len(use)
    instructions = [prompts[i] for i in use] * 2
    answers = [pairs[i][0] for i in use] + [pairs[i][1] for i in use]
    res = read_responses(
        model,
        instructions,
        answers,
        layers=[0],
        batch_size=batch_size,
        temperature=temperature,
        progress=progress,
    )
    nll, tempered = res.nll.double().numpy(), res.nll_tempered
    gain = (nll - tempered.double().numpy()) * res.n_tokens.double().numpy()  # type: ignore[union-attr]
    logp = -nll
    auc = roc_auc(np.r_[np.ones(n), np.zeros(n)], logp)
    strength = max(auc, 1 - auc)
    sharp = float(np.mean(gain[:n] > gain[n:]) + 0.5 * np.mean(gain[:n] == gain[n:]))
    return {
        "n_pairs": n,
        "logp_auc": auc,
        "strength": strength,
        "higher_in": "chosen" if auc >= 0.5 else "rejected",
        "chosen_likelier": float(np.mean(logp[:n] > logp[n:])),
        "sharpening_accuracy": sharp,
        "temperature": temperature,
        "chosen_nll": float(nll[:n].mean()),
        "rejected_nll": float(nll[n:].mean()),
        "threshold": threshold,
        "shortcut": bool(strength >= threshold or sharp >= threshold),
    }
