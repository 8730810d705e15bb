"""Inherent consistency: how far an instruction's own representation points along each criterion,
and the filter that keeps the most consistent instructions (the ``filter`` stage).

* :mod:`~icon2_lens.consistency.scores`: Icon² Eq. 2-3 and its variants (``score_consistency``).
* :mod:`~icon2_lens.consistency.filter`: ``FilterConfig``, ``KeptInstruction`` and the stage's files.
* :mod:`~icon2_lens.consistency.plot`: score distributions, kept vs the rest.

Reads: the model, direction sets, instructions.
Writes: ``scores.jsonl``, ``kept.jsonl``, ``examples.md``, ``consistency.html``/``.png``, ``filter.json``.
May import: model, directions.
"""
