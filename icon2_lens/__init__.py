"""icon2-lens: preference directions from a model's own residual stream, on TransformerLens.

Example:
    >>> from icon2_lens import DirectionSet, ExtractConfig, get_criteria
    >>> [c.name for c in get_criteria()]
    ['general', 'helpfulness', 'honesty', 'harmlessness']
"""

from importlib.metadata import PackageNotFoundError, version

from .alignez import AlignEZConfig, AlignEZEdit, fit_alignez, generate_alignez, load_alignez
from .baselines import SOURCES, BaselineConfig, make_pairs
from .chat import render_chat
from .clean import CleanReport, clean_instructions
from .collect import collect_resid
from .compare import Comparison, compare_pairwise, compare_pointwise, compare_systems
from .consistency import ConsistencyScores, Selection, score_consistency
from .cost import CostMeter
from .criteria import BUILTIN_CRITERIA, Criterion, get_criteria, load_criteria_file
from .diagnostics import criterion_cosines, layer_cosines, layer_table, recommend_interval
from .directions import METHODS, DirectionSet, fit_direction, fit_directions
from .evaluate import SystemSpec, evaluate_systems, parse_system
from .experiment import load_experiment_config, run_experiment
from .extract import (
    ContrastActivations,
    CriterionResult,
    ExtractConfig,
    ExtractionResult,
    contrast_activations,
    extract_criterion,
    run_extraction,
)
from .generate import Decoding, Generation, generate, generate_rows
from .hooks import normalize_layers, resid_hook_name
from .instructions import load_eval_instructions, load_instructions, read_instruction_file
from .io import load_direction_set, load_extraction, save_direction_set
from .judges import JUDGES, make_judge
from .models import load_model, model_fingerprint
from .pairs import KeptInstruction, PairConfig, PairsResult, generate_pairs
from .pipeline import load_config, run_pipeline
from .score import score_responses
from .steer import SteeringSpec, make_steering_hooks, steer
from .sweep import SweepResult, run_sweep
from .synthesize import SynthesisConfig, synthesize_instructions, synthesize_raw

# The TRL bridge (icon2_lens.dpo: train_dpo, make_dpo_trainer, to_hf_dataset) is imported on
# demand, so that importing icon2_lens does not load TRL.

try:
    __version__ = version("icon2-lens")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "AlignEZConfig",
    "AlignEZEdit",
    "fit_alignez",
    "generate_alignez",
    "load_alignez",
    "SOURCES",
    "BaselineConfig",
    "make_pairs",
    "Comparison",
    "compare_pairwise",
    "compare_pointwise",
    "compare_systems",
    "CostMeter",
    "SystemSpec",
    "evaluate_systems",
    "parse_system",
    "load_experiment_config",
    "run_experiment",
    "load_eval_instructions",
    "JUDGES",
    "make_judge",
    "BUILTIN_CRITERIA",
    "METHODS",
    "ContrastActivations",
    "Criterion",
    "CriterionResult",
    "DirectionSet",
    "ExtractConfig",
    "ExtractionResult",
    "collect_resid",
    "contrast_activations",
    "criterion_cosines",
    "extract_criterion",
    "fit_direction",
    "fit_directions",
    "get_criteria",
    "layer_cosines",
    "layer_table",
    "load_criteria_file",
    "load_direction_set",
    "load_instructions",
    "load_model",
    "model_fingerprint",
    "normalize_layers",
    "read_instruction_file",
    "recommend_interval",
    "render_chat",
    "resid_hook_name",
    "run_extraction",
    "save_direction_set",
    "SteeringSpec",
    "make_steering_hooks",
    "steer",
    "CleanReport",
    "clean_instructions",
    "ConsistencyScores",
    "Selection",
    "score_consistency",
    "Decoding",
    "Generation",
    "generate",
    "generate_rows",
    "load_extraction",
    "KeptInstruction",
    "PairConfig",
    "PairsResult",
    "generate_pairs",
    "load_config",
    "run_pipeline",
    "score_responses",
    "SweepResult",
    "run_sweep",
    "SynthesisConfig",
    "synthesize_instructions",
    "synthesize_raw",
]
