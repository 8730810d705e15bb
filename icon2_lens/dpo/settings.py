"""DPO settings: the knobs that matter for a small model on CPU, turned into a ``trl.DPOConfig``.

Each field is passed to ``trl.DPOConfig`` under its own name, except ``warmup_ratio``
(transformers 5 spells it ``warmup_steps`` < 1) and ``gradient_checkpointing`` (passed as
``activation_checkpointing`` where transformers has renamed it). Any other ``DPOConfig`` field can
be passed by name; unknown names raise with did-you-mean hints. Always set: CPU, float32 (TRL
defaults to bf16), no reporting, no checkpoints, no dataloader workers.
"""

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icon2_lens._config import documented, option

from .ends import CUT_ANSWER_MODES

if TYPE_CHECKING:
    import trl

__all__ = ["DPOSettings", "require_trl", "split_options"]


# Always passed to DPOConfig (an override by name still wins, e.g. use_cpu=False on a GPU box).
_FIXED_CONFIG: dict[str, Any] = {
    "bf16": False,  # TRL's default is bf16=True unless fp16 is set
    "fp16": False,
    "report_to": "none",
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_strategy": "steps",
    "push_to_hub": False,
    "dataloader_num_workers": 0,
    "ddp_find_unused_parameters": False,  # every parameter takes part in the DPO loss
    "dataloader_pin_memory": False,
    "disable_dropout": True,
}


def _config_aliases(config_fields: set[str]) -> dict[str, str]:
    """DPOSettings names that DPOConfig spells differently in the installed transformers."""
    # transformers 5 removed TrainingArguments.warmup_ratio; a warmup_steps value below 1 is a ratio.
    aliases = {"warmup_ratio": "warmup_steps"}
    # transformers 5.2x renamed gradient_checkpointing (a deprecated alias that warns when set).
    if "activation_checkpointing" in config_fields:
        aliases["gradient_checkpointing"] = "activation_checkpointing"
    return aliases


@documented
@dataclass(frozen=True, kw_only=True)
class DPOSettings:
    """The DPO knobs that matter for a small model on CPU (every other ``trl.DPOConfig`` field by name).

    The Icon² paper used lr 5e-7 for an 8B model at batch 128; a 135M model trained on a few
    hundred pairs for one epoch at batch 4 gets only ~50-100 optimizer steps, and small models
    tolerate larger steps, so the default is 5e-6 (5x TRL's default 1e-6).

    β is 1.0 rather than the paper's 0.1: on the embedded model a stronger pull towards the
    starting weights kept the gain in relevance on 320 held-out instructions and shrank the loss
    of fluency that weaker pulls showed there; on 400 instructions from another synthesis no judge
    that reads no direction finds the trained model worse than the base (docs/results.md).

    Example:
        >>> DPOSettings(beta=0.2).learning_rate
        5e-06
    """

    beta: float = option(
        1.0,
        help="KL strength of the DPO loss (the Icon² paper and TRL use 0.1; on the embedded "
        "model 1.0 kept the relevance gain of 0.1 and shrank its fluency loss, docs/results.md)",
    )
    learning_rate: float = option(5e-6, aliases=("--lr",), help="peak learning rate")
    lr_scheduler_type: str = option("cosine", help="learning-rate schedule after warmup")
    warmup_ratio: float = option(0.1, help="fraction of the optimizer steps spent in linear warmup")
    num_train_epochs: int | float = option(
        1, aliases=("--epochs",), help="passes over the pairs (ignored when max_steps > 0)"
    )
    max_steps: int = option(
        -1, help="stop after this many optimizer steps (-1: train num_train_epochs)"
    )
    per_device_train_batch_size: int = option(
        4, aliases=("--batch-size",), help="pairs per forward/backward pass"
    )
    gradient_accumulation_steps: int = option(1, help="batches per optimizer step")
    max_length: int = option(
        384,
        help="maximum prompt + completion tokens (longer ones are truncated at the end; "
        "records whose prompt alone reaches it are dropped by TRL)",
    )
    gradient_checkpointing: bool = option(
        False,
        help="activation checkpointing (TRL turns it on by default; on CPU "
        "with small models it only costs time)",
    )
    seed: int = option(0, help="seed of the initialisation, data order and dropout")
    logging_steps: int = option(1, help="optimizer steps between two log entries")
    ld_alpha: float | None = option(
        None,
        help="length-desensitised DPO (TRL ld_alpha, in [0, 1]): weight of the tokens past the "
        "shorter answer's length; None is plain DPO",
    )
    label_smoothing: float = option(
        0.0,
        help="TRL label_smoothing: with loss_type robust, the assumed share of flipped labels "
        "(0.0: plain DPO)",
    )
    sft_weight: float = option(
        0.0,
        help="weight of a chosen-answer likelihood term added to the DPO loss (TRL loss_type "
        "['sigmoid', 'sft'], loss_weights [1, sft_weight]): mean NLL per chosen token, which "
        "keeps the chosen answers likely while the margin grows; 0.0: plain DPO",
    )
    lora_r: int = option(
        0,
        help="LoRA rank through peft (0: train every weight). With LoRA the reference is the "
        "model with its adapter switched off; model/ holds the merged weights, adapter/ the "
        "PEFT adapter",
    )
    lora_alpha: int = option(16, help="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.0, help="dropout on the LoRA input")
    cut_answers: str = option(
        "open",
        help="a pair with an answer the pairs stage cut at its token limit: open (both answers "
        "train their own tokens only, no end-of-turn token, so ending is compared only between "
        "answers that both ended) or closed (as TRL renders every answer, closed by the chat "
        "template's end tokens)",
    )
    precompute_ref_log_probs: bool = option(
        False,
        help="TRL precompute_ref_log_probs: score every pair with the reference model once "
        "before training, so the reference need not stay in memory during it (saves memory on "
        "big models, same loss)",
    )

    def __post_init__(self) -> None:
        checks = {
            "beta": self.beta > 0,
            "learning_rate": self.learning_rate > 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "num_train_epochs": self.num_train_epochs > 0,
            "max_steps": self.max_steps == -1 or self.max_steps > 0,
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "max_length": self.max_length >= 2,
            "logging_steps": self.logging_steps >= 1,
            "ld_alpha": self.ld_alpha is None or 0.0 <= self.ld_alpha <= 1.0,
            "label_smoothing": 0.0 <= self.label_smoothing < 0.5,
            "sft_weight": self.sft_weight >= 0.0,
            "lora_r": self.lora_r >= 0,
            "lora_alpha": self.lora_alpha >= 1,
            "lora_dropout": 0.0 <= self.lora_dropout < 1.0,
            "cut_answers": self.cut_answers in CUT_ANSWER_MODES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(
                f"invalid DPO settings: {shown} (beta, learning_rate, num_train_epochs > 0; "
                "0 <= warmup_ratio < 1; max_steps -1 or > 0; batch size, accumulation, logging "
                "steps >= 1; max_length >= 2; ld_alpha None or in [0, 1]; 0 <= label_smoothing < 0.5; "
                "sft_weight >= 0; lora_r >= 0, lora_alpha >= 1, 0 <= lora_dropout < 1; cut_answers "
                "open or closed)"
            )

    def to_dpo_config(self, output_dir: str | os.PathLike, **overrides: Any) -> "trl.DPOConfig":
        """Build the ``trl.DPOConfig``: these settings, CPU/float32/offline defaults, overrides.

        Args:
            output_dir: Trainer output directory (nothing is checkpointed there by default).
            **overrides: Any ``DPOConfig`` field (or ``warmup_ratio``), applied last.

        Returns:
            The config (``use_cpu`` unless CUDA is available, ``bf16=fp16=False``, ``report_to="none"``,
            ``save_strategy="no"`` unless overridden).

        Raises:
            ValueError: For an override that is no ``DPOConfig`` field, listing the valid names,
                or one that sets the loss while ``sft_weight`` does too.

        Example:
            >>> cfg = DPOSettings(sft_weight=0.5).to_dpo_config("/tmp/dpo-example")
            >>> cfg.loss_type, cfg.loss_weights
            (['sigmoid', 'sft'], [1.0, 0.5])
        """
        import torch

        trl = require_trl()
        config_fields = _dpo_config_fields()
        _check_option_names(overrides, config_fields)
        aliases = _config_aliases(config_fields)
        loss: dict[str, Any] = {}
        if self.sft_weight > 0:
            clash = sorted({"loss_type", "loss_weights"} & set(overrides))
            if clash:
                raise ValueError(
                    f"sft_weight={self.sft_weight} sets the loss; drop {', '.join(clash)} or set "
                    "sft_weight = 0"
                )
            loss = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, float(self.sft_weight)]}
        kwargs = {
            **{
                aliases.get(k, k): v
                for k, v in dataclasses.asdict(self).items()
                if k not in LORA_FIELDS and k not in _LOSS_FIELDS and k not in _DATA_FIELDS
            },
            **loss,
            **_FIXED_CONFIG,
            # the CPU unless a GPU is there (then accelerate/DeepSpeed/FSDP place the model)
            "use_cpu": not torch.cuda.is_available(),
        }
        for name, value in overrides.items():
            kwargs[aliases.get(name, name)] = value
        return trl.DPOConfig(output_dir=str(output_dir), **kwargs)


#: DPOSettings fields that choose ``trl.DPOConfig``'s loss rather than name one of its fields.
_LOSS_FIELDS = ("sft_weight",)

#: DPOSettings fields that choose how the pairs are tokenized (:mod:`icon2_lens.dpo.ends`).
_DATA_FIELDS = ("cut_answers",)

#: DPOSettings fields that configure peft's LoRA, not ``trl.DPOConfig``.
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout")


def lora_config(settings: DPOSettings) -> Any:
    """peft's ``LoraConfig`` for ``settings`` (``None`` when ``lora_r`` is 0: full fine-tuning)."""
    if settings.lora_r == 0:
        return None
    try:
        import peft
    except ImportError:
        raise ValueError(
            "lora_r > 0 needs peft; install it with: pip install peft (or set lora_r = 0)"
        ) from None
    return peft.LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def require_trl():
    try:
        import trl
    except ImportError as e:  # pragma: no cover - trl is a core dependency
        raise ImportError(
            "DPO training needs trl and datasets: pip install 'trl>=1,<2' datasets"
        ) from e
    return trl


def _dpo_config_fields() -> set[str]:
    trl = require_trl()
    return {f.name for f in dataclasses.fields(trl.DPOConfig) if f.init}


def _settings_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DPOSettings)}


def _check_option_names(options: Mapping[str, Any], config_fields: set[str]) -> None:
    valid = config_fields | _settings_fields()
    unknown = sorted(set(options) - valid)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(valid), n=3)
        hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
    raise ValueError(
        f"unknown DPO option(s) {', '.join(hints)}. Valid names: the DPOSettings fields "
        f"({', '.join(sorted(_settings_fields()))}) and every trl.DPOConfig field: "
        f"{', '.join(sorted(config_fields))}"
    )


def split_options(
    settings: DPOSettings, options: Mapping[str, Any]
) -> tuple[DPOSettings, dict[str, Any]]:
    """Options naming a :class:`DPOSettings` field update the settings; the rest go to DPOConfig."""
    ours = {k: v for k, v in options.items() if k in _settings_fields()}
    rest = {k: v for k, v in options.items() if k not in ours}
    return dataclasses.replace(settings, **ours), rest
