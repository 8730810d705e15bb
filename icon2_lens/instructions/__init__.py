"""Instructions: the built-in sets, user files, and Magpie-style self-synthesis with cleaning (the
``synthesize`` stage).

* :mod:`~icon2_lens.instructions.builtin`: the shipped train / held-out splits and the benign +
  harmful evaluation set (``data/``), and reading ``.txt`` / ``.jsonl`` instruction files.
* :mod:`~icon2_lens.instructions.synthesize`: the model writes user turns itself (``SynthesisConfig``).
* :mod:`~icon2_lens.instructions.clean`: step-by-step cleaning with a count after every step.

Reads: the model (for synthesis), instruction files.
Writes: ``raw.jsonl`` (every sample, resumable), ``instructions.jsonl``, ``synthesis.json``.
May import: model.
"""
