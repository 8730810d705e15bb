"""A ``trl.DPOTrainer`` on a private copy of the model, with an explicit frozen reference.

* **TRL sees only** ``prompt`` / ``chosen`` / ``rejected``: :func:`to_hf_dataset` drops every
  other column (the ``icon2_*`` ones unless ``keep_provenance=True``), so nothing can collide with
  TRL's own columns (``tools``, ``images``, ``chat_template_kwargs``, ``ref_*_logps``). With
  ``cut_answers = "open"`` the two ``icon2_*_finished`` flags ride along until the pairs are
  tokenized, then go (:mod:`icon2_lens.dpo.ends`).
* **The caller's objects are never modified.** A directory or embedded-model key is loaded fresh;
  a Hugging Face model is deep-copied; the tokenizer is deep-copied (TRL sets its pad token). A
  TransformerLens ``TransformerBridge`` is never trained: the bridge replaced submodules of its
  HF model in place, so a plain HF model is reloaded from where
  :func:`icon2_lens.model.load.load_model` read it (:func:`icon2_lens.model.load.model_source`).
* **Reference model:** always an explicit, frozen copy of the starting weights. TRL's fallback
  (``ref_model=None``) reloads the reference from ``config._name_or_path``: it silently uses the
  on-disk weights when the in-memory model differs from them and fails for models never saved.
* Every step is logged through :mod:`logging` (TRL's own callbacks print, so they are replaced).
* **No telemetry:** TRL's trainers ping the Hub when built; :func:`make_dpo_trainer` turns that off
  first (:func:`icon2_lens._network.apply_network_defaults`).

Example:
    >>> record = {"prompt": [{"role": "user", "content": "tell me a story"}],
    ...           "chosen": [{"role": "assistant", "content": "the cat sat on the mat ."}],
    ...           "rejected": [{"role": "assistant", "content": "no ."}],
    ...           "icon2_criterion": "helpfulness"}
    >>> to_hf_dataset([record]).column_names
    ['prompt', 'chosen', 'rejected']
"""

import copy
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from icon2_lens._network import apply_network_defaults
from icon2_lens.model.load import model_source, resolve_model
from icon2_lens.pairs.records import PAIR_FIELDS, PROVENANCE_PREFIX, read_pairs, validate_pairs

from .ends import FINISHED_COLUMNS, count_opened, open_cut_answers
from .settings import DPOSettings, lora_config, require_trl, split_options

if TYPE_CHECKING:
    import datasets
    import trl
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "to_hf_dataset",
    "make_dpo_trainer",
    "as_records",
    "is_bridge",
    "dropped_records_message",
]

logger = logging.getLogger(__name__)


def to_hf_dataset(
    records: Sequence[Mapping[str, Any]],
    *,
    keep_provenance: bool = False,
    keep: Sequence[str] = (),
) -> "datasets.Dataset":
    """Validated records as a ``datasets.Dataset`` in TRL's explicit-prompt preference format.

    Args:
        records: Preference records (see :func:`validate_pairs`).
        keep_provenance: Keep the ``icon2_*`` columns (for inspection; do not hand them to TRL).
        keep: Provenance columns to keep anyway, where any record has them (missing: None).

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
    provenance = _provenance_columns(records)
    wanted = provenance if keep_provenance else [c for c in provenance if c in keep]
    columns = [*PAIR_FIELDS, *wanted]
    others = sorted({k for r in records for k in r} - set(columns) - set(provenance))
    if others:
        logger.warning("dropping columns TRL must not see: %s", ", ".join(others))
    return datasets.Dataset.from_list([{k: _plain(r.get(k)) for k in columns} for r in records])


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
            :func:`icon2_lens.model.load.load_model` (a plain HF model is reloaded from its source;
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
    apply_network_defaults()  # before TRL is imported: its trainers send telemetry when built
    settings, config_overrides = split_options(settings or DPOSettings(), overrides)
    args = settings.to_dpo_config(output_dir, **config_overrides)
    open_cut = settings.cut_answers == "open"
    dataset = to_hf_dataset(
        as_records(pairs), keep=list(FINISHED_COLUMNS.values()) if open_cut else ()
    )
    policy, source = _private_model(model)
    tok = _prepare_tokenizer(tokenizer, source)
    _check_chat_template(dataset, tok)
    lora = lora_config(settings)
    if lora is not None and ref_model is not None:
        raise ValueError(
            "with LoRA (lora_r > 0) the reference is the model with its adapter switched off; "
            "drop ref_model or set lora_r = 0"
        )
    # with LoRA, TRL uses the adapter-free base as the reference: the starting weights, frozen
    reference = (
        None
        if lora is not None
        else _freeze(copy.deepcopy(policy) if ref_model is None else _private_model(ref_model)[0])
    )
    trl = require_trl()
    trainer = _trainer_class(trl, open_cut)(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=lora,
    )
    _route_logs_to_logging(trainer)
    message = dropped_records_message(len(dataset), len(trainer.train_dataset), args.max_length)
    if message:
        logger.warning(message)
    return trainer


def _trainer_class(trl: Any, open_cut: bool) -> type:
    """``trl.DPOTrainer``, or a subclass that opens cut answers after TRL tokenizes the pairs.

    The subclass hooks TRL's ``_prepare_dataset`` (used by ``__init__`` and ``evaluate`` alike,
    before any reference log-probabilities are precomputed), so the opened rows are the ones
    trained and scored.
    """
    if not open_cut:
        return trl.DPOTrainer
    if not hasattr(trl.DPOTrainer, "_prepare_dataset"):
        raise ValueError(
            f"trl {trl.__version__} tokenizes the pairs elsewhere, so cut answers cannot be "
            "opened; set cut_answers = 'closed' or install trl 1.x"
        )

    class OpenCutDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            prepared = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not set(FINISHED_COLUMNS.values()) & set(prepared.column_names or ()):
                return prepared
            tok = getattr(processing_class, "tokenizer", processing_class)
            opened = prepared.map(open_cut_answers, fn_kwargs={"tokenizer": tok})
            opened = opened.remove_columns(
                [c for c in FINISHED_COLUMNS.values() if c in opened.column_names]
            )
            counts = count_opened(opened)
            logger.info(
                "%s: %d chosen and %d rejected answers of pairs with an answer cut at the token "
                "limit train without an end-of-turn token (cut_answers = open)",
                dataset_name,
                counts["chosen"],
                counts["rejected"],
            )
            return opened

    return OpenCutDPOTrainer


def as_records(pairs: Any) -> list[dict[str, Any]]:
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


def is_bridge(model: Any) -> bool:
    # A bridge exists only if transformer_lens is already imported; never import it here (≈ 6 s).
    bridge_module = sys.modules.get("transformer_lens.model_bridge")
    return bridge_module is not None and isinstance(model, bridge_module.TransformerBridge)


def _private_model(model: Any) -> "tuple[PreTrainedModel, str | None]":
    """(a float32 HF causal LM nobody else holds, the directory or hub id it came from)."""
    from transformers import PreTrainedModel

    if isinstance(model, (str, os.PathLike)):
        return _load_hf(model)
    if is_bridge(model):
        return _load_hf(_bridge_source(model))
    if isinstance(model, PreTrainedModel):
        _refuse_bridged(model)
        return _copy_hf(model), _directory_of(model)
    raise TypeError(
        f"model must be a model directory or name, a transformers PreTrainedModel or a "
        f"TransformerBridge from icon2_lens.model.load.load_model, not {type(model).__name__}"
    )


def _load_hf(name: str | os.PathLike) -> "tuple[PreTrainedModel, str]":
    from transformers import AutoModelForCausalLM

    where, _, local = resolve_model(name)
    hf = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, local_files_only=local)
    return hf, str(where)


def _bridge_source(bridge: Any) -> str:
    source = model_source(bridge)
    if source is None:
        raise ValueError(
            "this TransformerBridge was not loaded by icon2_lens.model.load.load_model (e.g. a tiny "
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
            if not state.is_world_process_zero:  # several processes: one log, from rank 0
                return
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


def dropped_records_message(n_given: int, n_kept: int, max_length: int | None) -> str | None:
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
