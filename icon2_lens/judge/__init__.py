"""Judges of responses, each saying what it reads, and the statistics that compare systems.

* :mod:`~icon2_lens.judge.base`: the pointwise and pairwise protocols.
* :mod:`~icon2_lens.judge.rules`: transparent rules (degeneration, refusals).
* :mod:`~icon2_lens.judge.surface`: surface features of an answer (length, apology opener,
  repetition, …), how well they separate two sets of answers, and judges that read one each.
* :mod:`~icon2_lens.judge.reading`: the inherent score, fluency and relevance (pointwise mutual
  information of request and answer), read from the unsteered model.
* :mod:`~icon2_lens.judge.self_judges`: the model's own rating and A/B choice.
* :mod:`~icon2_lens.judge.registry`: every judge by name (``make_judge``).
* :mod:`~icon2_lens.judge.compare` and :mod:`~icon2_lens.judge.stats`: win rates, length-controlled
  win rates, bootstrap intervals.

Reads: the model, direction sets. Writes: nothing.
May import: model, directions, consistency.
"""
