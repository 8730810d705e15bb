"""Shared types: tensor shapes (jaxtyping), residual sites, and the protocols of a model and a
direction set (so low-level code can accept either without importing where they are defined)."""

from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Site",
    "SITES",
    "Message",
    "LensModel",
    "Directions",
    "Direction",
    "LayerActs",
]

Site = Literal["resid_pre", "resid_mid", "resid_post"]
"""Where in a block the residual stream is read or written."""

SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

Direction = Float[Tensor, "d_model"]
"""One unit direction in the residual stream."""

LayerActs = Float[Tensor, "n layer d_model"]
"""One residual vector per prompt and layer."""


class Message(TypedDict):
    """One chat turn, as accepted by ``tokenizer.apply_chat_template``."""

    role: str
    content: str


@runtime_checkable
class LensModel(Protocol):
    """What icon2_lens needs from a model: a TransformerLens ``TransformerBridge`` provides it."""

    cfg: Any
    tokenizer: Any

    @property
    def hook_dict(self) -> Any: ...

    def hooks(
        self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., reset_hooks_end: bool = ...
    ) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Directions(Protocol):
    """One unit direction per layer, indexed by block: what a ``DirectionSet`` offers readers."""

    layers: tuple[int, ...]

    def __getitem__(self, layer: int) -> Tensor: ...
