"""icon2-lens: preference directions from a model's own residual stream, on TransformerLens.

The names a notebook needs are here, imported on first use (``import icon2_lens`` itself loads
neither torch models nor TRL). Everything else lives in the stage subpackages, one per stage of
the pipeline: :mod:`~icon2_lens.model`, :mod:`~icon2_lens.directions`,
:mod:`~icon2_lens.instructions`, :mod:`~icon2_lens.consistency`, :mod:`~icon2_lens.judge`,
:mod:`~icon2_lens.pairs`, :mod:`~icon2_lens.alignez`, :mod:`~icon2_lens.dpo`,
:mod:`~icon2_lens.evaluate`, :mod:`~icon2_lens.runs` and :mod:`~icon2_lens.cli`.

Example:
    >>> import icon2_lens
    >>> [c.name for c in icon2_lens.get_criteria()]
    ['general', 'helpfulness', 'honesty', 'harmlessness']
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("icon2-lens")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # the model
    "load_model": "model.load",
    "model_fingerprint": "model.load",
    "render_chat": "model.chat",
    "collect_resid": "model.collect",
    "Decoding": "model.generate",
    "generate": "model.generate",
    "read_responses": "model.read",
    # directions
    "Criterion": "directions.criteria",
    "get_criteria": "directions.criteria",
    "ExtractConfig": "directions.extract",
    "run_extraction": "directions.extract",
    "extract_criterion": "directions.extract",
    "load_extraction": "directions.folder",
    "DirectionSet": "directions.set",
    "load_direction_set": "directions.set",
    "SteeringSpec": "directions.steer",
    "steer": "directions.steer",
    # instructions and the consistency filter
    "load_instructions": "instructions.builtin",
    "SynthesisConfig": "instructions.synthesize",
    "synthesize_instructions": "instructions.synthesize",
    "score_consistency": "consistency.scores",
    # pairs, judges, training, evaluation
    "KeptInstruction": "consistency.filter",
    "PairConfig": "pairs.icon2",
    "generate_pairs": "pairs.icon2",
    "make_pairs": "pairs.baselines",
    "make_judge": "judge.registry",
    "compare_systems": "judge.compare",
    "DPOSettings": "dpo.settings",
    "train_dpo": "dpo.train",
    "AlignEZConfig": "alignez.config",
    "fit_alignez": "alignez.fit",
    "RunConfig": "runs.config",
    "run_pipeline": "runs.pipeline",
    "run_experiment": "runs.experiment",
    "write_figures": "figures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icon2_lens' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
