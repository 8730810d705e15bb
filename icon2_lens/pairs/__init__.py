"""Preference pairs: Icon²'s steered chosen/rejected answers, the baseline sources, one record type
and one store, the γ/layer sweep (the ``pairs`` and ``sweep`` stages).

* :mod:`~icon2_lens.pairs.records`: the TRL preference record, its checks, drop reasons and counts.
* :mod:`~icon2_lens.pairs.store`: ``pairs.jsonl`` / ``dropped.jsonl`` / ``settings.json``, resumable.
* :mod:`~icon2_lens.pairs.icon2`: ``PairConfig`` and ``generate_pairs`` (bidirectional steering).
* :mod:`~icon2_lens.pairs.baselines`, :mod:`~icon2_lens.pairs.ranking`, :mod:`~icon2_lens.pairs.common`:
  system prompts, sampling-ranking, self-rewarding, unfiltered Icon², in the same format.
* :mod:`~icon2_lens.pairs.margins`: how the pairs read under the unsteered model.
* :mod:`~icon2_lens.pairs.sweep`: the γ / layer sweep; :mod:`~icon2_lens.pairs.sweep_rule`:
  ``SweepConfig``, its summaries and the two rules that pick a setting (independent, inherent).

Reads: the model, direction sets, kept instructions.
Writes: ``pairs.jsonl``, ``dropped.jsonl``, ``settings.json``, ``summary.json``; the sweep
``responses.jsonl``, ``sweep.json``, ``sweep.html``/``.png``.
May import: model, directions, consistency, judge.
"""
