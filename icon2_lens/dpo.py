"""DPO on preference pairs with TRL's ``DPOTrainer``, on CPU, without touching the caller's model.

Design:

* **Records** are TRL's explicit-prompt preference format, either *conversational* (``prompt``,
  ``chosen`` and ``rejected`` are lists of ``{"role", "content"}`` messages; TRL applies the chat
  template itself) or *standard* (three strings; TRL concatenates ``prompt + chosen`` and appends
  EOS), plus flat ``icon2_*`` provenance columns. :func:`validate_pairs` checks **every** record,
  because TRL decides the format from the first record only and would mis-tokenise a mixed file.
* **TRL sees only** ``prompt`` / ``chosen`` / ``rejected``: :func:`to_hf_dataset` drops every
  other column (the ``icon2_*`` ones unless ``keep_provenance=True``), so nothing can collide with
  TRL's own columns (``tools``, ``images``, ``chat_template_kwargs``, ``ref_*_logps``).
* **The caller's objects are never modified.** A directory or embedded-model key is loaded fresh;
  a Hugging Face model is deep-copied; the tokenizer is deep-copied (TRL sets its pad token). A
  TransformerLens ``TransformerBridge`` is never trained: the bridge replaced submodules of its
  HF model in place, so a plain HF model is reloaded from where
  :func:`icon2_lens.models.load_model` read it (:func:`icon2_lens.models.model_source`).
* **Reference model:** always an explicit, frozen copy of the starting weights. TRL's fallback
  (``ref_model=None``) reloads the reference from ``config._name_or_path``: it works offline for a
  local directory (checked: identical losses to the explicit copy), but it silently uses the
  on-disk weights when the in-memory model differs from them and fails for models never saved.
  Memory is policy + reference + gradients + AdamW state ≈ 5x the weights (peak RSS ≈ 4.3 GB for
  SmolLM2-135M at batch 4).
* **Configuration:** :class:`DPOSettings` holds the knobs that matter for a small model on CPU;
  any other ``trl.DPOConfig`` field can be passed by name and unknown names raise. Always set: CPU,
  float32 (TRL defaults to bf16), no reporting, no checkpoints, no dataloader workers; every
  step is logged through :mod:`logging` (TRL's own callbacks print, so they are replaced).
* **Outputs** of :func:`train_dpo`: an ordinary HF model directory (``out/model``), the full log
  history (``out/dpo_log.json``), reward curves (``out/dpo_curves.html`` / ``.png``), and a
  reward-saturation check (:func:`check_reward_saturation`).

``trl`` and ``datasets`` are imported only by the functions that need them (``import trl`` takes
several seconds).

Example:
    >>> record = {"prompt": [{"role": "user", "content": "tell me a story"}],
    ...           "chosen": [{"role": "assistant", "content": "the cat sat on the mat ."}],
    ...           "rejected": [{"role": "assistant", "content": "no ."}],
    ...           "icon2_criterion": "helpfulness"}
    >>> validate_pairs([record])
    'conversational'
    >>> to_hf_dataset([record]).column_names
    ['prompt', 'chosen', 'rejected']
"""

import argparse
import copy
import dataclasses
import difflib
import gc
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .io import write_json
from .models import _resolve, model_source, package_versions

if TYPE_CHECKING:
    import datasets
    import plotly.graph_objects as go
    import trl
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PAIR_FIELDS",
    "PROVENANCE_PREFIX",
    "DPOSettings",
    "DPOResult",
    "read_pairs",
    "validate_pairs",
    "to_hf_dataset",
    "make_dpo_trainer",
    "train_dpo",
    "plot_reward_curves",
    "check_reward_saturation",
    "add_dpo_arguments",
    "cli_dpo",
]

logger = logging.getLogger(__name__)

PAIR_FIELDS: tuple[str, str, str] = ("prompt", "chosen", "rejected")
PROVENANCE_PREFIX = "icon2_"
PairFormat = Literal["conversational", "standard"]

# Always passed to DPOConfig (an override by name still wins, e.g. use_cpu=False on a GPU box).
_FIXED_CONFIG: dict[str, Any] = {
    "use_cpu": True,
    "bf16": False,  # TRL's default is bf16=True unless fp16 is set
    "fp16": False,
    "report_to": "none",
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_strategy": "steps",
    "push_to_hub": False,
    "dataloader_num_workers": 0,
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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file of preference records (one JSON object per line).

    Args:
        path: The ``.jsonl`` file. Blank lines are skipped.

    Returns:
        The records, in file order (not validated; see :func:`validate_pairs`).

    Raises:
        ValueError: On a malformed line (the message names the file and the 1-based line number),
            a line that is not a JSON object, or a file without records.

    Example:
        >>> import json, tempfile
        >>> rec = {"prompt": "the cat", "chosen": " sat .", "rejected": " no ."}
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(json.dumps(rec) + "\\n\\n")
        >>> read_pairs(f.name) == [rec]
        True
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                records.append(_parse_line(line, path, lineno))
    if not records:
        raise ValueError(f"{path} holds no preference records (it is empty or only blank lines)")
    return records


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); every non-blank "
            "line must hold one JSON object"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def validate_pairs(records: Sequence[Mapping[str, Any]]) -> PairFormat:
    """Check preference records and return their (single) format.

    Args:
        records: Records with ``prompt``, ``chosen`` and ``rejected`` (extra keys are allowed).

    Returns:
        ``"conversational"`` (message lists) or ``"standard"`` (strings).

    Raises:
        ValueError: Naming the record index and the fix, when there are no records, a record lacks
            a field or has an empty one, formats are mixed, a message lacks ``role`` / ``content``,
            ``chosen`` / ``rejected`` is not an assistant turn, or a prompt ends with one.

    Example:
        >>> validate_pairs([{"prompt": "the cat", "chosen": " sat .", "rejected": " no ."}])
        'standard'
        >>> validate_pairs([{"prompt": "the cat", "chosen": "", "rejected": " no ."}])
        Traceback (most recent call last):
        ...
        ValueError: records[0]['chosen'] is empty; fill it or drop the record (DPO scores the completion tokens)
    """
    if len(records) == 0:
        raise ValueError(
            "no preference records: DPO needs at least one {prompt, chosen, rejected} record"
        )
    first = _record_format(records[0], 0)
    for i in range(1, len(records)):
        fmt = _record_format(records[i], i)
        if fmt != first:
            raise ValueError(
                f"records[{i}] is in {fmt} format but records[0] is {first}: TRL reads the format "
                "from the first record only, so convert all records to one format (message lists "
                "for chat models, strings for base models)"
            )
    return first


def _record_format(record: Mapping[str, Any], i: int) -> PairFormat:
    if not isinstance(record, Mapping):
        raise ValueError(
            f"records[{i}] is a {type(record).__name__}, not a mapping with prompt/chosen/rejected"
        )
    missing = [k for k in PAIR_FIELDS if k not in record]
    if missing:
        raise ValueError(
            f"records[{i}] lacks {', '.join(repr(k) for k in missing)}: every record needs 'prompt', "
            "'chosen' and 'rejected' (TRL's explicit-prompt preference format; move a shared "
            "prefix of an implicit-prompt record into 'prompt')"
        )
    values = [record[k] for k in PAIR_FIELDS]
    if all(isinstance(v, str) for v in values):
        _check_standard(record, i)
        return "standard"
    if all(isinstance(v, (list, tuple)) for v in values):
        _check_conversational(record, i)
        return "conversational"
    kinds = ", ".join(f"{k}: {type(record[k]).__name__}" for k in PAIR_FIELDS)
    raise ValueError(
        f"records[{i}] mixes field types ({kinds}); use strings for all three (standard format) "
        "or lists of {'role', 'content'} messages for all three (conversational format)"
    )


def _check_standard(record: Mapping[str, Any], i: int) -> None:
    for k in PAIR_FIELDS:
        if not record[k].strip():
            raise ValueError(
                f"records[{i}][{k!r}] is empty; fill it or drop the record (DPO scores the completion tokens)"
            )


def _check_conversational(record: Mapping[str, Any], i: int) -> None:
    for k in PAIR_FIELDS:
        if len(record[k]) == 0:
            raise ValueError(
                f"records[{i}][{k!r}] is an empty message list; fill it or drop the record"
            )
        for j, message in enumerate(record[k]):
            _check_message(message, f"records[{i}][{k!r}][{j}]")
    for k in ("chosen", "rejected"):
        roles = sorted({m["role"] for m in record[k]} - {"assistant"})
        if roles:
            raise ValueError(
                f"records[{i}][{k!r}] holds a {roles[0]!r} turn; chosen and rejected must be assistant "
                "turns only, e.g. [{'role': 'assistant', 'content': '...'}] (system and user turns "
                "belong in 'prompt')"
            )
    if record["prompt"][-1]["role"] == "assistant":
        raise ValueError(
            f"records[{i}]['prompt'] ends with an assistant turn; the prompt must end with the turn "
            "the completion answers (usually 'user'), and the answer goes in chosen/rejected"
        )


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ValueError(
            f"{where} must be a message {{'role': ..., 'content': ...}}, got {message!r:.80}"
        )
    if not isinstance(message["content"], str) or not message["content"].strip():
        raise ValueError(f"{where} has empty or non-text content; fill it or drop the record")


def to_hf_dataset(
    records: Sequence[Mapping[str, Any]], *, keep_provenance: bool = False
) -> "datasets.Dataset":
    """Validated records as a ``datasets.Dataset`` in TRL's explicit-prompt preference format.

    Args:
        records: Preference records (see :func:`validate_pairs`).
        keep_provenance: Keep the ``icon2_*`` columns (for inspection; do not hand them to TRL).

    Returns:
        A dataset with the columns ``prompt``, ``chosen``, ``rejected`` (and the ``icon2_*`` ones
        if asked). Any other column is dropped with a warning.

    Example:
        >>> rec = {"prompt": "the cat", "chosen": " sat .", "rejected": " no .", "icon2_seed": 0}
        >>> to_hf_dataset([rec], keep_provenance=True).column_names
        ['prompt', 'chosen', 'rejected', 'icon2_seed']
    """
    import datasets

    validate_pairs(records)
    keep = [*PAIR_FIELDS, *(_provenance_columns(records) if keep_provenance else [])]
    others = sorted({k for r in records for k in r} - set(keep) - set(_provenance_columns(records)))
    if others:
        logger.warning("dropping columns TRL must not see: %s", ", ".join(others))
    return datasets.Dataset.from_list([{k: _plain(r.get(k)) for k in keep} for r in records])


def _provenance_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.update((k, None) for k in r if k.startswith(PROVENANCE_PREFIX))
    return list(seen)


def _plain(value: Any) -> Any:
    """Tuples of mappings (accepted by :func:`validate_pairs`) as lists of dicts for Arrow."""
    if isinstance(value, (list, tuple)):
        return [dict(v) if isinstance(v, Mapping) else v for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DPOSettings:
    """The DPO knobs that matter for a small model on CPU.

    Each field is passed to ``trl.DPOConfig`` under its own name, except ``warmup_ratio``
    (transformers 5 spells it ``warmup_steps`` < 1) and ``gradient_checkpointing`` (passed as
    ``activation_checkpointing`` where transformers has renamed it).

    Attributes:
        beta: KL strength of the DPO loss (0.1 as in the Icon² paper and TRL).
        learning_rate: Peak learning rate. The Icon² paper used 5e-7 for an 8B model at batch
            128; a 135M model trained on a few hundred pairs for one epoch at batch 4 gets only
            ~50-100 optimizer steps, and small models tolerate larger steps, so the default is
            5e-6 (5x TRL's default 1e-6).
        lr_scheduler_type: Learning-rate schedule after warmup.
        warmup_ratio: Fraction of the optimizer steps spent in linear warmup.
        num_train_epochs: Passes over the pairs (ignored when ``max_steps > 0``).
        max_steps: Stop after this many optimizer steps (``-1``: train ``num_train_epochs``).
        per_device_train_batch_size: Pairs per forward/backward pass.
        gradient_accumulation_steps: Batches per optimizer step.
        max_length: Maximum prompt + completion tokens; longer sequences are truncated at the end,
            and records whose prompt alone reaches it are dropped by TRL.
        gradient_checkpointing: TRL turns it on by default; on CPU with small models it only
            costs time, so it is off.
        seed: Seed of the initialisation, data order and dropout.
        logging_steps: Optimizer steps between two log entries.

    Example:
        >>> DPOSettings(beta=0.2).learning_rate
        5e-06
    """

    beta: float = 0.1
    learning_rate: float = 5e-6
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    num_train_epochs: int | float = 1
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 384
    gradient_checkpointing: bool = False
    seed: int = 0
    logging_steps: int = 1

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
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(
                f"invalid DPO settings: {shown} (beta, learning_rate, num_train_epochs > 0; "
                "0 <= warmup_ratio < 1; max_steps -1 or > 0; batch size, accumulation, logging "
                "steps >= 1; max_length >= 2)"
            )

    def to_dpo_config(self, output_dir: str | os.PathLike, **overrides: Any) -> "trl.DPOConfig":
        """Build the ``trl.DPOConfig``: these settings, CPU/float32/offline defaults, overrides.

        Args:
            output_dir: Trainer output directory (nothing is checkpointed there by default).
            **overrides: Any ``DPOConfig`` field (or ``warmup_ratio``), applied last.

        Returns:
            The config (``use_cpu=True``, ``bf16=fp16=False``, ``report_to="none"``,
            ``save_strategy="no"`` unless overridden).

        Raises:
            ValueError: For an override that is no ``DPOConfig`` field, listing the valid names.
        """
        trl = _require_trl()
        config_fields = _dpo_config_fields()
        _check_option_names(overrides, config_fields)
        aliases = _config_aliases(config_fields)
        kwargs = {
            **{aliases.get(k, k): v for k, v in dataclasses.asdict(self).items()},
            **_FIXED_CONFIG,
        }
        for name, value in overrides.items():
            kwargs[aliases.get(name, name)] = value
        return trl.DPOConfig(output_dir=str(output_dir), **kwargs)


def _require_trl():
    try:
        import trl
    except ImportError as e:  # pragma: no cover - trl is a core dependency
        raise ImportError(
            "DPO training needs trl and datasets: pip install 'trl>=1,<2' datasets"
        ) from e
    return trl


def _dpo_config_fields() -> set[str]:
    trl = _require_trl()
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


def _split_options(
    settings: DPOSettings, options: Mapping[str, Any]
) -> tuple[DPOSettings, dict[str, Any]]:
    """Options naming a :class:`DPOSettings` field update the settings; the rest go to DPOConfig."""
    ours = {k: v for k, v in options.items() if k in _settings_fields()}
    rest = {k: v for k, v in options.items() if k not in ours}
    return dataclasses.replace(settings, **ours), rest


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


def make_dpo_trainer(
    model: "str | os.PathLike | PreTrainedModel | Any",
    pairs: "Sequence[Mapping[str, Any]] | str | os.PathLike | datasets.Dataset",
    *,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    ref_model: "str | os.PathLike | PreTrainedModel | Any | None" = None,
    output_dir: str | os.PathLike = "runs/dpo",
    settings: DPOSettings | None = None,
    **overrides: Any,
) -> "trl.DPOTrainer":
    """A ``trl.DPOTrainer`` on a private copy of ``model``, with an explicit frozen reference.

    Args:
        model: An embedded-model key or local HF model directory (or hub id), a ``transformers``
            causal LM (deep-copied; never modified), or a ``TransformerBridge`` from
            :func:`icon2_lens.models.load_model` (a plain HF model is reloaded from its source;
            the bridge itself is never trained).
        pairs: Records, a JSONL path (:func:`read_pairs`) or a ``datasets.Dataset``; validated and
            reduced to ``prompt`` / ``chosen`` / ``rejected``.
        tokenizer: Passed to TRL as ``processing_class`` (a copy; eos doubles as pad if there is
            no pad token). Default: loaded from the model's directory.
        ref_model: Reference policy, same kinds as ``model`` (copied, frozen). Default: a frozen
            copy of the starting weights of ``model``.
        output_dir: Trainer output directory (no checkpoints are written unless overridden).
        settings: DPO settings (default :class:`DPOSettings`).
        **overrides: :class:`DPOSettings` fields or any other ``trl.DPOConfig`` field.

    Returns:
        The trainer; ``trainer.train()`` trains ``trainer.model``.

    Raises:
        ValueError: For unknown overrides (checked before anything is loaded), invalid pairs, a
            bridge without a known source, conversational pairs with a tokenizer without a chat
            template, or when every record is longer than ``max_length``.
    """
    settings, config_overrides = _split_options(settings or DPOSettings(), overrides)
    args = settings.to_dpo_config(output_dir, **config_overrides)
    dataset = _as_dataset(pairs)
    policy, source = _private_model(model)
    tok = _prepare_tokenizer(tokenizer, source)
    _check_chat_template(dataset, tok)
    reference = _freeze(
        copy.deepcopy(policy) if ref_model is None else _private_model(ref_model)[0]
    )
    trl = _require_trl()
    trainer = trl.DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tok
    )
    _route_logs_to_logging(trainer)
    message = _dropped_records_message(len(dataset), len(trainer.train_dataset), args.max_length)
    if message:
        logger.warning(message)
    return trainer


def _as_records(pairs: Any) -> list[dict[str, Any]]:
    if isinstance(pairs, (str, os.PathLike)):
        return read_pairs(pairs)
    hf_datasets = sys.modules.get("datasets")
    if hf_datasets is not None and isinstance(pairs, hf_datasets.Dataset):
        return pairs.to_list()
    if hf_datasets is not None and isinstance(pairs, hf_datasets.DatasetDict):
        raise TypeError("pairs is a DatasetDict; pass one split, e.g. pairs['train']")
    if isinstance(pairs, Sequence):
        return [dict(r) if isinstance(r, Mapping) else r for r in pairs]
    raise TypeError(
        f"pairs must be records, a JSONL path or a datasets.Dataset, not {type(pairs).__name__}"
    )


def _as_dataset(pairs: Any) -> "datasets.Dataset":
    return to_hf_dataset(_as_records(pairs))


def _is_bridge(model: Any) -> bool:
    # A bridge exists only if transformer_lens is already imported; never import it here (≈ 6 s).
    bridge_module = sys.modules.get("transformer_lens.model_bridge")
    return bridge_module is not None and isinstance(model, bridge_module.TransformerBridge)


def _private_model(model: Any) -> "tuple[PreTrainedModel, str | None]":
    """(a float32 HF causal LM nobody else holds, the directory or hub id it came from)."""
    from transformers import PreTrainedModel

    if isinstance(model, (str, os.PathLike)):
        return _load_hf(model)
    if _is_bridge(model):
        return _load_hf(_bridge_source(model))
    if isinstance(model, PreTrainedModel):
        _refuse_bridged(model)
        return _copy_hf(model), _directory_of(model)
    raise TypeError(
        f"model must be a model directory or name, a transformers PreTrainedModel or a "
        f"TransformerBridge from icon2_lens.models.load_model, not {type(model).__name__}"
    )


def _load_hf(name: str | os.PathLike) -> "tuple[PreTrainedModel, str]":
    from transformers import AutoModelForCausalLM

    where, _, local = _resolve(name)
    hf = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, local_files_only=local)
    return hf, str(where)


def _bridge_source(bridge: Any) -> str:
    source = model_source(bridge)
    if source is None:
        raise ValueError(
            "this TransformerBridge was not loaded by icon2_lens.models.load_model (e.g. a tiny "
            "test bridge), so there is no directory to reload a plain Hugging Face model from; "
            "its own HF model cannot be trained (the bridge replaced its submodules in place). "
            "Pass a model directory (hf_model.save_pretrained(dir)) or a transformers model."
        )
    logger.info(
        "training a fresh HF model loaded from %s (the bridge itself is left alone)", source
    )
    return source


def _refuse_bridged(model: "PreTrainedModel") -> None:
    if any(type(m).__module__.startswith("transformer_lens") for m in model.modules()):
        raise ValueError(
            "this HF model carries TransformerLens modules (it is a bridge's original_model, "
            "rewired in place); pass the bridge itself, or a model directory, instead"
        )


def _copy_hf(model: "PreTrainedModel") -> "PreTrainedModel":
    twin = copy.deepcopy(model)
    # TRL patches `forward` on the instance (a fused LM head); on a copy that closure would still
    # call the *original* object's forward, so drop any instance-level forward.
    vars(twin).pop("forward", None)
    if twin.dtype != torch.float32:
        logger.info("training a float32 copy of the %s model (CPU training)", twin.dtype)
        twin = twin.float()
    return twin


def _directory_of(model: "PreTrainedModel") -> str | None:
    name = getattr(model.config, "_name_or_path", "") or ""
    return name if name and Path(name).is_dir() else None


def _freeze(model: "PreTrainedModel") -> "PreTrainedModel":
    model.eval()
    model.requires_grad_(False)
    return model


def _prepare_tokenizer(
    tokenizer: "PreTrainedTokenizerBase | None", source: str | None
) -> "PreTrainedTokenizerBase":
    if tokenizer is not None:
        tok = copy.deepcopy(tokenizer)  # TRL sets pad tokens on it; the caller's stays as it is
    elif source is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
    else:
        raise ValueError(
            "no tokenizer: pass tokenizer= (the model was not loaded from a directory that holds one)"
        )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tok.pad_token = tok.eos_token
    return tok


def _check_chat_template(dataset: "datasets.Dataset", tok: "PreTrainedTokenizerBase") -> None:
    if isinstance(dataset[0]["prompt"], list) and not getattr(tok, "chat_template", None):
        raise ValueError(
            "conversational pairs need a tokenizer with a chat template, and this one has none "
            "(a base model?); write the pairs in standard format (prompt/chosen/rejected strings)"
        )


def _route_logs_to_logging(trainer: "trl.DPOTrainer") -> None:
    """Replace the trainer's printing callbacks by one that logs through :mod:`logging`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_logging_callback())


def _logging_callback() -> Any:
    from transformers import TrainerCallback

    class _LogToLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "rewards/accuracies" in logs:
                logger.info(
                    "step %d/%d  loss %.4f  reward acc %.3f  margin %+.4f  lr %.2e",
                    state.global_step,
                    state.max_steps,
                    logs.get("loss", math.nan),
                    logs["rewards/accuracies"],
                    logs.get("rewards/margins", math.nan),
                    logs.get("learning_rate", math.nan),
                )
            elif "train_runtime" in logs:
                logger.info("trained %d steps in %.1f s", state.global_step, logs["train_runtime"])

    return _LogToLogger()


def _dropped_records_message(n_given: int, n_kept: int, max_length: int | None) -> str | None:
    if n_kept == 0:
        raise ValueError(
            f"TRL dropped all {n_given} records: every prompt is at least max_length={max_length} "
            "tokens long; raise max_length or shorten the prompts"
        )
    if n_kept < n_given:
        return (
            f"TRL dropped {n_given - n_kept} of {n_given} records whose prompt alone reaches "
            f"max_length={max_length} tokens; raise max_length to keep them"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Training run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DPOResult:
    """What :func:`train_dpo` produced.

    Attributes:
        model_dir: The trained model and tokenizer as an ordinary HF directory.
        log_history: TRL's log entries (one per logged step, then a run summary).
        n_records: Records given (before TRL drops over-long prompts).
        n_steps: Optimizer steps taken.
        saturated: Whether :func:`check_reward_saturation` flagged the run.
        warnings: Warning messages of the run (also logged).
        model: The trained model in memory (eval mode; the weights in ``model_dir``).
    """

    model_dir: Path
    log_history: list[dict[str, Any]]
    n_records: int
    n_steps: int
    saturated: bool
    warnings: list[str] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)


def train_dpo(
    model: "str | os.PathLike | PreTrainedModel | Any",
    pairs: "Sequence[Mapping[str, Any]] | str | os.PathLike | datasets.Dataset",
    out_dir: str | os.PathLike,
    *,
    tokenizer: "PreTrainedTokenizerBase | None" = None,
    ref_model: "str | os.PathLike | PreTrainedModel | Any | None" = None,
    settings: DPOSettings | None = None,
    png: bool = True,
    **overrides: Any,
) -> DPOResult:
    """Train ``model`` on ``pairs`` with DPO and write the model, its log and reward curves.

    Writes ``out_dir/model`` (HF directory: loads with ``AutoModelForCausalLM.from_pretrained`` and
    :func:`icon2_lens.models.load_model`), ``out_dir/dpo_log.json`` (settings, record counts and
    the full per-step log history: loss, rewards/accuracies, rewards/margins, rewards/chosen,
    rewards/rejected, learning_rate, step, ...) and ``out_dir/dpo_curves.html`` (+ ``.png``; a
    failed PNG export only warns).

    Args:
        model: See :func:`make_dpo_trainer`; the caller's object is never modified.
        pairs: Records, a JSONL path or a ``datasets.Dataset``.
        out_dir: Output directory (created).
        tokenizer: See :func:`make_dpo_trainer`.
        ref_model: See :func:`make_dpo_trainer`.
        settings: DPO settings (default :class:`DPOSettings`).
        png: Also write ``dpo_curves.png`` (needs kaleido and a local Chromium).
        **overrides: :class:`DPOSettings` fields or any other ``trl.DPOConfig`` field.

    Returns:
        A :class:`DPOResult`; its ``saturated`` flag comes from :func:`check_reward_saturation`.
    """
    out = Path(out_dir)
    records = _as_records(pairs)
    settings, config_overrides = _split_options(settings or DPOSettings(), overrides)
    trainer = make_dpo_trainer(
        model,
        records,
        tokenizer=tokenizer,
        ref_model=ref_model,
        output_dir=out,
        settings=settings,
        **config_overrides,
    )
    n_kept, max_length = len(trainer.train_dataset), trainer.args.max_length
    t0 = time.perf_counter()
    with torch.enable_grad():  # also when the caller disabled gradients globally
        trainer.train()
    seconds = time.perf_counter() - t0
    trained = _finished_model(trainer)
    model_dir = _save_model(trained, trainer.processing_class, out / "model")
    history = [dict(entry) for entry in trainer.state.log_history]
    n_steps = int(trainer.state.global_step)
    _release(trainer)
    del trainer
    # The dropped-records message was logged by make_dpo_trainer; keep it for the record.
    dropped = _dropped_records_message(len(records), n_kept, max_length)
    warnings = [dropped] if dropped else []
    saturation = check_reward_saturation(history)
    if saturation:
        logger.warning(saturation)
        warnings.append(saturation)
    warnings += _write_curves(history, out, png=png)
    log = {
        "format": validate_pairs(records),
        "n_records": len(records),
        "n_trained_records": n_kept,
        "n_steps": n_steps,
        "train_seconds": round(seconds, 3),
        "settings": dataclasses.asdict(settings),
        "overrides": _jsonable(config_overrides),
        "model": _describe(model),
        "model_dir": str(model_dir),
        "saturated": saturation is not None,
        "warnings": warnings,
        "packages": _versions(),
        "log_history": history,
    }
    write_json(log, out / "dpo_log.json")
    return DPOResult(
        model_dir=model_dir,
        log_history=history,
        n_records=len(records),
        n_steps=n_steps,
        saturated=saturation is not None,
        warnings=warnings,
        model=trained,
    )


def _release(trainer: "trl.DPOTrainer") -> None:
    """Free the reference model and the optimizer state now rather than at a later collection.

    TRL's fused-LM-head patch makes each patched model reference itself (a bound ``forward`` in
    its ``__dict__``), so only the cyclic garbage collector frees the reference model.
    """
    trainer.accelerator.free_memory()
    trainer.ref_model = None
    trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()


def _finished_model(trainer: "trl.DPOTrainer") -> "PreTrainedModel":
    trained = trainer.accelerator.unwrap_model(trainer.model)
    vars(trained).pop("forward", None)  # undo TRL's instance-level fused-LM-head patch
    # Trainer sets config.use_cache = args.use_cache (False) for training; the saved model should
    # generate with its KV cache like any causal LM.
    trained.config.use_cache = True
    return trained.eval()


def _save_model(model: "PreTrainedModel", tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    logger.info("saved the trained model to %s", path)
    return path


def _write_curves(history: list[dict[str, Any]], out: Path, *, png: bool) -> list[str]:
    from .viz import write_figures

    if not _train_rows(history):
        return []
    try:
        write_figures({"dpo_curves": plot_reward_curves(history)}, out, png=png)
    except RuntimeError as e:  # write_figures writes the HTML before trying the PNG
        message = f"{e} (dpo_curves.html was written)"
        logger.warning(message)
        return [message]
    return []


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=repr))


def _describe(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if _is_bridge(model):
        return str(model_source(model))
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = package_versions()
    for dist in ("trl", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------


def _train_rows(log_history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Training log entries (evaluation entries carry ``eval_`` keys, the summary none)."""
    return [row for row in log_history if "rewards/accuracies" in row]


def plot_reward_curves(
    log_history: Sequence[Mapping[str, Any]], *, template: str = "plotly_white"
) -> "go.Figure":
    """Reward accuracy and reward margin against the optimizer step.

    Args:
        log_history: ``trainer.state.log_history`` (or ``DPOResult.log_history``).
        template: Plotly template.

    Returns:
        A figure with two stacked panels: ``rewards/accuracies`` (fraction of pairs whose chosen
        reward beats the rejected one; dotted line at chance) and ``rewards/margins``.

    Raises:
        ValueError: If no entry has ``rewards/accuracies``.

    Example:
        >>> fig = plot_reward_curves([{"step": 1, "rewards/accuracies": 0.5, "rewards/margins": 0.1}])
        >>> [t.name for t in fig.data]
        ['rewards/accuracies', 'rewards/margins']
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = _train_rows(log_history)
    if not rows:
        raise ValueError(
            "the log history has no 'rewards/accuracies' entries (no DPO training step was logged)"
        )
    steps = [row.get("step", i + 1) for i, row in enumerate(rows)]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(
            "reward accuracy (chosen reward > rejected reward)",
            "reward margin (chosen − rejected reward)",
        ),
    )
    for r, key in enumerate(("rewards/accuracies", "rewards/margins"), start=1):
        fig.add_trace(
            go.Scatter(x=steps, y=[row.get(key) for row in rows], name=key, mode="lines+markers"),
            row=r,
            col=1,
        )
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="margin", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(template=template, title="DPO reward curves", width=800, height=600)
    return fig


def check_reward_saturation(
    log_history: Sequence[Mapping[str, Any]],
    *,
    threshold: float = 0.97,
    early_fraction: float = 0.2,
    window: int = 3,
) -> str | None:
    """Warn when the reward accuracy saturates early: the reward-hacking signature.

    When chosen and rejected come from opposite system prompts, they can differ in surface
    features (length, tone, refusals) that the policy learns to tell apart almost at once: the
    Icon² paper (App. I) saw ``rewards/accuracies`` ≈ 0.99 early in training while the model
    barely improved. This flags a run whose accuracy, averaged over ``window`` consecutive logged
    steps (per-step accuracies on small batches are noisy), reaches ``threshold`` within the first
    ``early_fraction`` of the logged steps. Runs with fewer than ``window / early_fraction``
    logged steps are too short to judge and are never flagged. The first step always logs
    accuracy 0 (the policy still equals the reference, so all rewards tie).

    Args:
        log_history: ``trainer.state.log_history`` (entries without ``rewards/accuracies`` are
            ignored).
        threshold: Accuracy counted as saturated.
        early_fraction: Leading fraction of the logged steps that counts as "early".
        window: Logged steps averaged before comparing with ``threshold``.

    Returns:
        A warning message (the caller logs it), or ``None``.

    Example:
        >>> fast = [{"step": s, "rewards/accuracies": 1.0 if s > 1 else 0.0} for s in range(1, 51)]
        >>> check_reward_saturation(fast) is not None
        True
        >>> slow = [{"step": s, "rewards/accuracies": s / 50} for s in range(1, 51)]
        >>> check_reward_saturation(slow) is None
        True
    """
    if not (0 < threshold <= 1 and 0 < early_fraction <= 1 and window >= 1):
        raise ValueError("need 0 < threshold <= 1, 0 < early_fraction <= 1 and window >= 1")
    rows = _train_rows(log_history)
    accuracies = [float(row["rewards/accuracies"]) for row in rows]
    early = math.ceil(early_fraction * len(rows))
    for end in range(window, early + 1):
        mean = sum(accuracies[end - window : end]) / window
        if mean >= threshold:
            return _saturation_message(rows, end - 1, mean, window, early_fraction)
    return None


def _saturation_message(
    rows: Sequence[Mapping[str, Any]], at: int, mean: float, window: int, early_fraction: float
) -> str:
    step, last = rows[at].get("step", at + 1), rows[-1].get("step", len(rows))
    margin = rows[at].get("rewards/margins", math.nan)
    return (
        f"reward accuracy saturated early: mean {mean:.2f} over {window} logged steps by step "
        f"{step} of {last} (first {early_fraction:.0%} of training; margin {margin:.3f}). This is "
        "the reward-hacking signature of pairs that differ by surface cues (Icon² App. I: "
        "accuracy ≈ 0.99 early while the model barely improves). Inspect the pairs (length, "
        "tone, refusals), filter them by consistency, or raise beta / lower the learning rate."
    )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_dpo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``icon2-lens dpo`` to ``parser`` (a subcommand parser).

    Example:
        >>> p = add_dpo_arguments(argparse.ArgumentParser())
        >>> p.parse_args(["--pairs", "p.jsonl", "--out", "o"]).beta
        0.1
    """
    d = DPOSettings()
    parser.add_argument(
        "--pairs",
        required=True,
        help="preference pairs, JSONL (TRL conversational or standard format)",
    )
    parser.add_argument(
        "--out", required=True, help="output directory: model/, dpo_log.json, dpo_curves.html/.png"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="embedded model key (smollm2-135m [default], gemma3-270m), HF model directory or hub id",
    )
    parser.add_argument("--beta", type=float, default=d.beta, help="DPO beta (default %(default)s)")
    parser.add_argument(
        "--lr", type=float, default=d.learning_rate, help="peak learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=float, default=d.num_train_epochs, help="epochs (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d.per_device_train_batch_size,
        help="pairs per step (default %(default)s)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=d.max_length,
        help="max prompt+completion tokens (default %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=d.max_steps,
        help="stop after this many optimizer steps (default: -1, train --epochs)",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="seed (default %(default)s)")
    parser.add_argument("--no-png", action="store_true", help="write the HTML reward curves only")
    return parser


def cli_dpo(args: argparse.Namespace) -> int:
    """Run ``icon2-lens dpo``: errors are logged and give exit code 2.

    Args:
        args: Parsed options of :func:`add_dpo_arguments`.

    Returns:
        0 on success, 2 on a user error (bad pairs file, model, or option).
    """
    try:
        source = _resolve(args.model)[0]
        settings = DPOSettings(
            beta=args.beta,
            learning_rate=args.lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            max_length=args.max_length,
            max_steps=args.max_steps,
            seed=args.seed,
        )
        logger.info("DPO on %s with pairs %s", source, args.pairs)
        result = train_dpo(
            str(source), args.pairs, args.out, settings=settings, png=not args.no_png
        )
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        logger.error("icon2-lens dpo: error: %s", e)
        return 2
    last = _train_rows(result.log_history)[-1] if _train_rows(result.log_history) else {}
    logger.info(
        "%d records, %d steps; final reward accuracy %.3f, margin %+.4f%s; outputs in %s",
        result.n_records,
        result.n_steps,
        last.get("rewards/accuracies", math.nan),
        last.get("rewards/margins", math.nan),
        " (SATURATED, see warning)" if result.saturated else "",
        Path(args.out).resolve(),
    )
    return 0
