"""Directions: per-layer preference directions from contrastive system prompts, their file format,
diagnostics, figures, and steering along them (the ``extract`` stage).

* :mod:`~icon2_lens.directions.criteria`: each criterion's positive and negative system prompt.
* :mod:`~icon2_lens.directions.fit`: one unit direction per layer from the contrasts (PCA and friends).
* :mod:`~icon2_lens.directions.set`: :class:`~icon2_lens.directions.set.DirectionSet` and its
  ``directions.safetensors`` + ``cfg.json`` folder.
* :mod:`~icon2_lens.directions.extract`: the stage end to end (``ExtractConfig``, resume per criterion).
* :mod:`~icon2_lens.directions.diagnostics` and :mod:`~icon2_lens.directions.plots`: held-out
  accuracies, the interval rule, layer-selection figures.
* :mod:`~icon2_lens.directions.steer`: adding ``γ·u`` to the residual stream, in a context manager.
* :mod:`~icon2_lens.directions.contrast`: reading instructions under two system prompts.
* :mod:`~icon2_lens.directions.wording`: the same contrast in other words (concept or wording?).
* :mod:`~icon2_lens.directions.confounds` and :mod:`~icon2_lens.directions.orthogonal`: confound
  directions (length, apology, refusal, sentiment, formality) and projecting them out.

Reads: the model, instructions (built-in splits or files), criteria (built-in or TOML/JSON),
wordings and confound data (shipped in ``data/``, or files).
Writes: ``<out>/<criterion>/{directions.safetensors,cfg.json,diagnostics.json}``,
``<out>/diagnostics.json``, ``<out>/figures/``.
May import: model, instructions.
"""
