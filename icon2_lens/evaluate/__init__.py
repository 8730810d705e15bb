"""Evaluation: systems (base, trained models, AlignEZ, steering) answer held-out instructions and every
judge compares them with a reference (the ``eval`` stage).

* :mod:`~icon2_lens.evaluate.systems`: ``SystemSpec`` and the answers of each system (resumable).
* :mod:`~icon2_lens.evaluate.judging`: ``EvalConfig``, judging against the reference, ``eval.json``.

Reads: the base model, other models or edits, direction sets, instructions.
Writes: ``answers/<system>.jsonl`` with ``answers/<system>.settings.json`` (what made them),
``answers.jsonl`` (side by side), ``scores.jsonl`` (what every judge read per instruction),
``eval.json``.
May import: model, directions, instructions, consistency, judge, alignez.
"""
