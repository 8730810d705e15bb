"""A fitted AlignEZ edit and its file format (``alignez.safetensors`` + ``alignez.json``)."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from icon2_lens._files import (
    read_safetensors,
    read_saved_config,
    safetensors_bytes,
    write_bytes,
    write_json,
)
from icon2_lens._types import LensModel
from icon2_lens.model.hooks import resid_hook_name
from icon2_lens.model.load import check_fits, package_versions

from .config import (
    CFG_FILE,
    DESCRIBE_HARM,
    DESCRIBE_HELP,
    FORMAT,
    FORMAT_VERSION,
    PROMPTS_VERSION,
    RESPOND_SYSTEM,
    SIGN_CONVENTION,
    SITE,
    WEIGHTS_FILE,
    AlignEZConfig,
)

__all__ = ["AlignEZEdit", "load_alignez", "check_edit"]


@dataclass(eq=False)
class AlignEZEdit:
    """A fitted AlignEZ edit: per-layer help/harm directions, centres and scales.

    Attributes:
        model_name: The model it was fitted on.
        layers: Edited block indices (``resid_post``), sorted.
        help: ``[layer, k, d_model]`` float32 unit help directions.
        harm: ``[layer, k, d_model]`` float32 unit harm directions.
        center: ``[layer, d_model]`` gate centre ``c_l`` (midpoint of the help and harm means).
        query_center: ``[layer, d_model]`` filter centre ``μ_l`` (mean last-token residual of
            the fit queries).
        resid_norm: ``[layer]`` mean norm ``n_l`` of the answer embeddings.
        config: The settings it was fitted with (they also say how to apply it).
        stats: Fit statistics: ``n_queries``, ``n_pairs`` (used), ``dropped`` (reason -> count),
            ``pairs`` (per generated pair: query ``index``, embedding ``similarity``, ``used``),
            ``candidate_layers``, ``layer_rule`` and ``per_layer`` (hook name -> ``resid_norm``,
            ``difference``, ``separation``, ``heldout_separation``, ``explained``,
            ``singular_values``).
        n_model_layers: Blocks of the model it was fitted on (0: unknown).
        model_fingerprint: Weight fingerprint of that model (empty: unknown).
    """

    model_name: str
    layers: tuple[int, ...]
    help: Float[Tensor, "layer k d_model"]
    harm: Float[Tensor, "layer k d_model"]
    center: Float[Tensor, "layer d_model"]
    query_center: Float[Tensor, "layer d_model"]
    resid_norm: Float[Tensor, " layer"]
    config: AlignEZConfig = field(default_factory=AlignEZConfig)
    stats: dict[str, Any] = field(default_factory=dict)
    n_model_layers: int = 0
    model_fingerprint: str = ""

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if len(self.layers) != self.help.shape[0] or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(
                f"layers {list(self.layers)} must be distinct, sorted, one per row of help"
            )
        for name in ("help", "harm", "center", "query_center", "resid_norm"):
            t = getattr(self, name).detach().to("cpu", torch.float32).contiguous()
            if not torch.isfinite(t).all():
                raise ValueError(f"AlignEZ {name} holds NaN or infinite values")
            setattr(self, name, t)
        if self.help.shape[1] != self.config.k:
            raise ValueError(
                f"help holds {self.help.shape[1]} directions per layer but config.k={self.config.k}"
            )

    @classmethod
    def synthetic(
        cls,
        help: Float[Tensor, "layer k d_model"],
        *,
        layers: Sequence[int] | None = None,
        harm: Float[Tensor, "layer k d_model"] | None = None,
        resid_norm: float = 1.0,
        config: AlignEZConfig | None = None,
    ) -> "AlignEZEdit":
        """An edit from given directions (zero centres), for experiments and tests.

        Args:
            help: Help directions (unit rows, or zero rows for unused slots).
            layers: The layers they belong to (default ``0..layer-1``).
            harm: Harm directions (default: the mirror ``-help``).
            resid_norm: ``n_l`` for every layer (scales with ``unit="relative"``).
            config: Settings (``k`` is taken from ``help``).

        Example:
            >>> import torch
            >>> AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
            AlignEZEdit(model=synthetic, layers=[1], k=2, harm=mirror, strength=1.0)
        """
        n_layers, k, d = help.shape
        config = config or AlignEZConfig(k=k)
        if config.k != k:
            config = replace(config, k=k)
        return cls(
            model_name="synthetic",
            layers=tuple(layers) if layers is not None else tuple(range(n_layers)),
            help=help,
            harm=harm if harm is not None else -help,
            center=torch.zeros(n_layers, d),
            query_center=torch.zeros(n_layers, d),
            resid_norm=torch.full((n_layers,), float(resid_norm)),
            config=config,
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AlignEZEdit(model={self.model_name}, layers={list(self.layers)}, k={c.k}, "
            f"harm={c.harm}, strength={c.strength})"
        )

    @property
    def d_model(self) -> int:
        return int(self.help.shape[-1])

    @property
    def hook_names(self) -> list[str]:
        return [resid_hook_name(layer, SITE) for layer in self.layers]

    def tau(self) -> Float[Tensor, " layer"]:
        """Gate temperature ``τ_l`` per edited layer."""
        base = (
            self.resid_norm if self.config.unit == "relative" else torch.ones_like(self.resid_norm)
        )
        return (self.config.gate_scale * base).clamp(min=1e-12)

    def push(self) -> Float[Tensor, " layer"]:
        """Push ``r_l`` per edited layer."""
        scale = (
            self.config.edit_scale if self.config.edit_scale is not None else self.config.gate_scale
        )
        base = (
            self.resid_norm if self.config.unit == "relative" else torch.ones_like(self.resid_norm)
        )
        return scale * base

    def save(self, path: str | Path) -> Path:
        """Write ``alignez.safetensors`` (tensors) and ``alignez.json`` (the rest) into directory ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            "help": self.help,
            "harm": self.harm,
            "center": self.center,
            "query_center": self.query_center,
            "resid_norm": self.resid_norm,
        }
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "model_name": self.model_name,
            "site": SITE,
            "layers": ",".join(map(str, self.layers)),
        }
        write_bytes(out / WEIGHTS_FILE, safetensors_bytes(tensors, header))
        tau, push = self.tau(), self.push()
        cfg = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "d_model": self.d_model,
            "n_layers": self.n_model_layers,
            "site": SITE,
            "layers": list(self.layers),
            "hook_names": self.hook_names,
            "k": self.config.k,
            "config": self.config.settings(),
            "stats": self.stats,
            "sign_convention": SIGN_CONVENTION,
            "prompts": {
                "describe_help": DESCRIBE_HELP,
                "describe_harm": DESCRIBE_HARM,
                "respond_system": RESPOND_SYSTEM,
                "version": PROMPTS_VERSION,
            },
            "per_layer": {
                name: {
                    "tau": float(tau[j]),
                    "push": float(push[j]),
                    "resid_norm": float(self.resid_norm[j]),
                }
                for j, name in enumerate(self.hook_names)
            },
            "versions": package_versions(),
        }
        write_json(cfg, out / CFG_FILE)
        return out


def load_alignez(
    path: str | Path, model: LensModel | None = None, *, check_fingerprint: bool = True
) -> AlignEZEdit:
    """Read an edit written by :meth:`AlignEZEdit.save` (nothing is unpickled).

    Args:
        path: The directory (or one of its two files).
        model: If given, the edit must fit it (:func:`check_edit`).
        check_fingerprint: With ``model``, also require bit-identical weights.

    Raises:
        ValueError: Missing or damaged files, another format or version, an edit for another model.

    Example:
        >>> import tempfile, torch
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16))
        >>> back = load_alignez(edit.save(tempfile.mkdtemp()))
        >>> torch.equal(back.help, edit.help), back.config == edit.config
        (True, True)
    """
    cfg_path, weights_path, cfg = read_saved_config(
        path,
        cfg_file=CFG_FILE,
        weights_file=WEIGHTS_FILE,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        what="AlignEZ edit",
        fix="Re-fit the edit.",
        missing_hint=" (write one with 'icon2-lens alignez fit')",
    )
    names = ("help", "harm", "center", "query_center", "resid_norm")
    tensors, _ = read_safetensors(weights_path, names)
    try:
        edit = AlignEZEdit(
            model_name=str(cfg["model_name"]),
            layers=tuple(int(x) for x in cfg["layers"]),
            config=AlignEZConfig.from_settings(cfg["config"]),
            stats=dict(cfg.get("stats") or {}),
            n_model_layers=int(cfg.get("n_layers") or 0),
            model_fingerprint=str(cfg.get("model_fingerprint") or ""),
            **tensors,
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path} is incomplete or does not match {WEIGHTS_FILE}: {e}") from e
    if model is not None:
        check_edit(edit, model, check_fingerprint=check_fingerprint, source=str(cfg_path.parent))
    return edit


def check_edit(
    edit: AlignEZEdit, model: LensModel, *, check_fingerprint: bool = True, source: str = ""
) -> None:
    """Raise a ``ValueError`` naming the fix unless ``edit`` can be applied to ``model``."""
    where = f" ({source})" if source else ""
    check_fits(
        model,
        what=f"the AlignEZ edit{where}",
        d_model=edit.d_model,
        layers=edit.layers,
        origin=edit.model_name,
        fingerprint=edit.model_fingerprint,
        check_fingerprint=check_fingerprint,
        fix="fit an edit for this model ('icon2-lens alignez fit' or fit_alignez)",
    )
