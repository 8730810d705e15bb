"""Settings of an audit: one dataclass, one source for every default."""

from dataclasses import dataclass

from icon2_lens._config import check_names, documented, option
from icon2_lens.directions.confounds import CONFOUNDS, check_confounds
from icon2_lens.directions.wording import WORDING_THRESHOLD
from icon2_lens.pairs.icon2 import DEFAULT_GAMMA_NEG

from .data import DOMAINS, check_domains
from .likelihood import SHARPENING_TEMPERATURE
from .shortcuts import SHORTCUT_THRESHOLD

__all__ = ["AuditConfig", "SECTIONS"]

SECTIONS: tuple[str, ...] = (
    "lens",
    "stereotype",
    "wording",
    "confounds",
    "shortcuts",
    "likelihood",
    "shift",
)
"""The parts of an audit, in the order they run (``shortcuts`` and ``likelihood`` need pairs,
``shift`` a trained model)."""


@documented
@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """What an audit measures and how (recorded in ``audit.json`` and ``settings.json``)."""

    sections: tuple[str, ...] = option(
        SECTIONS,
        help="parts to run, comma-separated: lens, stereotype, wording, confounds, shortcuts "
        "and likelihood (with pairs), shift (with a trained model)",
    )
    domains: tuple[str, ...] = option(
        DOMAINS,
        help="minimal-pair domains (StereoSet: gender, race, profession, religion; morality)",
    )
    confounds: tuple[str, ...] = option(
        tuple(CONFOUNDS), help=f"confound directions to compare with ({', '.join(CONFOUNDS)})"
    )
    layers: tuple[int, ...] | None = option(
        None,
        layers="steered",
        help="layers steered in the behavioural tests and summarised in the headline numbers; "
        "'steered' = the layers the pairs steered (their settings.json), else each criterion's "
        "recommended interval",
    )
    gamma_pos: float = option(
        -DEFAULT_GAMMA_NEG,
        help="γ⁺ of the behavioural tests (default: the mirror of the pairs' γ⁻, the γ of the "
        "chosen answer in the default's mirrored pairs)",
    )
    gamma_neg: float = option(
        DEFAULT_GAMMA_NEG, help="γ⁻ of the behavioural tests (the pairs' default)"
    )
    unit: str = option("relative", choices=("relative", "absolute"), help="unit of γ")
    top_k: int = option(
        10, help="tokens listed per layer by the logit lens and per γ by the steering shift"
    )
    n_prompts: int = option(
        32, help="held-out instructions used as neutral prompts (steering shift)"
    )
    max_pairs: int | None = option(
        150, help="minimal pairs per domain read on the directions (a seeded sample; None: all)"
    )
    max_score_pairs: int | None = option(
        50,
        help="of those, pairs per domain in the likelihood test, run once per condition "
        "(base, ±γ per criterion, trained); None: all",
    )
    n_boot: int = option(1000, help="bootstrap resamples of every interval")
    n_wording: int = option(
        48,
        help="held-out instructions read under each wording (half fit, half test the pooled fit)",
    )
    n_wording_train: int = option(
        64, help="training instructions for the pooled (multi-wording) fit"
    )
    wordings_file: str | None = option(
        None, help="TOML/JSON file of more wordings ([[wordings.<criterion>]] positive, negative)"
    )
    wording_threshold: float = option(
        WORDING_THRESHOLD, help="paired accuracy below which a layer reads the wording"
    )
    shortcut_threshold: float = option(
        SHORTCUT_THRESHOLD, help="cue strength (AUC) that counts as a shortcut"
    )
    shortcut_error: bool = option(
        False, help="fail, instead of warning, when a shortcut cue reaches the threshold"
    )
    sharpening_temperature: float = option(
        SHARPENING_TEMPERATURE,
        help="likelihood section: temperature (< 1) of the sharpened copy of the model whose DPO "
        "reward accuracy on the pairs is reported",
    )
    confound_threshold: float = option(
        0.3,
        help="|cosine| with a confound direction at a steered layer that is reported as a warning",
    )
    folds: int = option(5, help="cross-validation folds of the bag-of-words shortcut test")
    n_shift: int = option(96, help="held-out instructions read by both models for the DPO shift")
    seed: int = option(0, help="seed of samples, bootstraps and folds")
    batch_size: int = option(16, help="prompts per forward pass")

    def __post_init__(self) -> None:
        if not self.sections:
            raise ValueError(f"name at least one audit section ({', '.join(SECTIONS)})")
        object.__setattr__(
            self, "sections", check_names(list(self.sections), SECTIONS, "audit section")
        )
        object.__setattr__(self, "domains", check_domains(list(self.domains)))
        object.__setattr__(self, "confounds", check_confounds(list(self.confounds)))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.unit not in ("relative", "absolute"):
            raise ValueError(f"unknown unit {self.unit!r}; use relative or absolute")
        for name in (
            "top_k",
            "n_prompts",
            "n_boot",
            "n_wording",
            "n_wording_train",
            "n_shift",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise ValueError(
                f"max_pairs must be at least 2 (or None for all), got {self.max_pairs}"
            )
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if not 0.0 < self.confound_threshold <= 1.0:
            raise ValueError(f"confound_threshold must be in (0, 1], got {self.confound_threshold}")
        if not 0.0 < self.sharpening_temperature < 1.0:
            raise ValueError(
                f"sharpening_temperature must be in (0, 1), got {self.sharpening_temperature}"
            )
        for name in ("wording_threshold", "shortcut_threshold"):
            if not 0.5 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0.5, 1], got {getattr(self, name)}")
