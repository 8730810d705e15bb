"""Runs: the end-to-end pipeline and the comparison experiment, their configuration and reports.

* :mod:`~icon2_lens.runs.config`: ``RunConfig`` / ``ExperimentConfig`` (trees of the stages'
  settings classes), TOML presets, ``config.json`` and the resume check.
* :mod:`~icon2_lens.runs.stages`: each stage into its folder, finished when its marker is written.
* :mod:`~icon2_lens.runs.pipeline`: ``icon2-lens run``.
* :mod:`~icon2_lens.runs.experiment` and :mod:`~icon2_lens.runs.tables`: ``icon2-lens experiment``.
* :mod:`~icon2_lens.runs.report`: ``report.md`` / ``report.html``.

Reads: a configuration. Writes: a run folder (``config.json``, ``timings.json`` or ``costs.json``,
one folder per stage, the report).
May import: model, directions, instructions, consistency, judge, pairs, alignez, dpo, evaluate,
audit.
"""
