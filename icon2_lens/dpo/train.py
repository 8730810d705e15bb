"""Training a model with DPO and writing what a researcher reads afterwards.

:func:`train_dpo` writes ``out/model`` (an ordinary HF directory), ``out/dpo_log.json`` (settings,
record counts, the saturation rule and verdict, TRL's full per-step log history) and the reward
curves (``out/dpo_curves.html`` / ``.png``).
"""

import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from icon2_lens._files import write_json
from icon2_lens.figures import write_figures
from icon2_lens.model.load import model_source, package_versions
from icon2_lens.pairs.records import validate_pairs

from .curves import SaturationRule, check_reward_saturation, plot_reward_curves, train_rows
from .ends import count_opened
from .settings import DPOSettings, split_options
from .trainer import as_records, dropped_records_message, is_bridge, make_dpo_trainer

if TYPE_CHECKING:
    import datasets
    import trl
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DPOResult", "train_dpo"]

logger = logging.getLogger(__name__)


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
    :func:`icon2_lens.model.load.load_model`), ``out_dir/dpo_log.json`` (settings, record counts and
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
    records = as_records(pairs)
    settings, config_overrides = split_options(settings or DPOSettings(), overrides)
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
    opened = count_opened(trainer.train_dataset)
    t0 = time.perf_counter()
    with torch.enable_grad():  # also when the caller disabled gradients globally
        trainer.train()
    seconds = time.perf_counter() - t0
    trained = _finished_model(trainer)
    accelerator = trainer.accelerator
    processes = _processes(trainer)
    main = accelerator.is_main_process
    if main:  # one writer: every rank holds the same weights after DDP's synchronised steps
        trained = _save_model(trained, trainer.processing_class, out)
    model_dir = out / "model"
    history = [dict(entry) for entry in trainer.state.log_history]
    n_steps = int(trainer.state.global_step)
    _release(trainer)
    del trainer
    # The dropped-records message was logged by make_dpo_trainer; keep it for the record.
    dropped = dropped_records_message(len(records), n_kept, max_length)
    warnings = [dropped] if dropped else []
    rule = SaturationRule()
    saturation = check_reward_saturation(history, rule)
    if saturation:
        logger.warning(saturation)
        warnings.append(saturation)
    if main:
        warnings += _write_curves(history, out, png=png)
    log = {
        "format": validate_pairs(records),
        "n_records": len(records),
        "n_trained_records": n_kept,
        "n_steps": n_steps,
        "opened_cut_answers": opened,
        "train_seconds": round(seconds, 3),
        "processes": processes,
        "settings": dataclasses.asdict(settings),
        "overrides": _jsonable(config_overrides),
        "model": _describe(model),
        "model_dir": str(model_dir),
        "saturated": saturation is not None,
        "saturation_rule": rule.to_dict(),
        "warnings": warnings,
        "packages": _versions(),
        "log_history": history,
    }
    if main:
        write_json(log, out / "dpo_log.json")
    accelerator.wait_for_everyone()  # no rank returns before the files exist
    return DPOResult(
        model_dir=model_dir,
        log_history=history,
        n_records=len(records),
        n_steps=n_steps,
        saturated=saturation is not None,
        warnings=warnings,
        model=trained,
    )


def _processes(trainer: "trl.DPOTrainer") -> dict[str, Any]:
    """How the run was spread: processes, engine, and the global batch that follows from them."""
    acc, args = trainer.accelerator, trainer.args
    n = int(acc.num_processes)
    return {
        "num_processes": n,
        "distributed_type": str(acc.distributed_type).rsplit(".", 1)[-1],
        "per_device_train_batch_size": int(args.per_device_train_batch_size),
        "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
        "global_batch_size": n
        * int(args.per_device_train_batch_size)
        * int(args.gradient_accumulation_steps),
    }


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


def _save_model(model: "PreTrainedModel", tokenizer: Any, out: Path) -> "PreTrainedModel":
    """``out/model`` (an ordinary HF directory); a LoRA run also writes ``out/adapter`` (PEFT)."""
    if hasattr(model, "merge_and_unload"):  # a peft model: keep the adapter, save merged weights
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        logger.info("saved the LoRA adapter to %s", out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    logger.info("saved the trained model to %s", out / "model")
    return model


def _write_curves(history: list[dict[str, Any]], out: Path, *, png: bool) -> list[str]:
    if not train_rows(history):
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
    if is_bridge(model):
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
