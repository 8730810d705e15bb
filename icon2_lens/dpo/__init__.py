"""DPO with TRL's ``DPOTrainer`` on CPU, without touching the caller's model (the ``dpo`` stage).

* :mod:`~icon2_lens.dpo.settings`: ``DPOSettings`` → ``trl.DPOConfig`` (CPU, float32, offline).
* :mod:`~icon2_lens.dpo.trainer`: the dataset TRL sees and a trainer on a private copy of the model.
* :mod:`~icon2_lens.dpo.train`: ``train_dpo`` and what it writes.
* :mod:`~icon2_lens.dpo.curves`: reward curves and the one saturation rule.

``trl`` and ``datasets`` are imported only by the functions that need them.

Reads: a model directory (or key), preference records.
Writes: ``model/`` (an ordinary HF directory), ``dpo_log.json``, ``dpo_curves.html``/``.png``.
May import: model, pairs.
"""
