"""Applying an AlignEZ edit: per-query direction filter, gates, a residual editor, generation.

Example:
    >>> import torch
    >>> from icon2_lens.alignez.config import AlignEZConfig
    >>> edit = AlignEZEdit.synthetic(torch.eye(2, 4).view(1, 2, 4), config=AlignEZConfig(center=False))
    >>> help_mask, harm_mask = filter_directions(edit, torch.tensor([[[-1.0, 2.0, 0.0, 0.0]]]))
    >>> help_mask.tolist(), harm_mask.tolist()
    ([[[True, False]]], [[[True, True]]])
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from icon2_lens._types import LensModel
from icon2_lens.model.chat import render_chat
from icon2_lens.model.collect import collect_resid
from icon2_lens.model.generate import Decoding, Generation, generate
from icon2_lens.model.hooks import RowSelection, as_tl_hook, edit_start, validate_hook_names

from .config import SITE, check_finite
from .edit import AlignEZEdit, check_edit
from .subspace import gated_edit

__all__ = ["filter_directions", "Gate", "AlignEZEditor", "alignez", "generate_alignez"]


def _cos(z: Tensor, dirs: Tensor) -> Tensor:
    """Cosine of ``z [n, d]`` with each row of ``dirs [k, d]``; 0 where either vector is zero."""
    zn = z.norm(dim=-1, keepdim=True)
    dn = dirs.norm(dim=-1)
    # Elementwise product and sum rather than a matmul, so a row's value (and the sign of a
    # near-zero cosine) does not depend on how many rows are filtered together.
    dots = (z.unsqueeze(-2) * dirs).sum(-1)
    denom = zn * dn
    return torch.where(denom > 0, dots / denom.clamp(min=1e-30), torch.zeros_like(dots))


def filter_directions(
    edit: "AlignEZEdit", residuals: Float[Tensor, "n layer d_model"]
) -> tuple[Bool[Tensor, "n layer k"], Bool[Tensor, "n layer k"]]:
    """Which help and harm directions each query keeps, from its last-token residuals ``Φ``.

    Args:
        edit: The fitted edit.
        residuals: ``Φ_l(q)`` at the edit's layers, in the order of ``edit.layers``.

    Returns:
        ``(help_mask, harm_mask)``: a help direction is kept iff ``cos(z, θ) ≤ 0`` and a harm
        direction per ``harm_filter`` (``z = Φ − μ`` when ``center``, else ``Φ``); zero
        directions are never kept.

    """
    n_layers, k, d = edit.help.shape
    if residuals.ndim != 3 or residuals.shape[1:] != (n_layers, d):
        raise ValueError(
            f"query residuals must be [n, {n_layers}, {d}] (one row per prompt at the edit's layers "
            f"{list(edit.layers)}), got {tuple(residuals.shape)}"
        )
    phi = residuals.detach().to("cpu", torch.float32)
    if edit.config.center:
        phi = phi - edit.query_center.unsqueeze(0)
    help_mask = torch.zeros(phi.shape[0], n_layers, k, dtype=torch.bool)
    harm_mask = torch.zeros_like(help_mask)
    for j in range(n_layers):
        valid_h = edit.help[j].norm(dim=-1) > 0
        valid_x = edit.harm[j].norm(dim=-1) > 0
        help_mask[:, j] = (_cos(phi[:, j], edit.help[j]) <= 0) & valid_h
        if edit.config.harm_filter == "always":
            harm_mask[:, j] = valid_x.expand(phi.shape[0], k)
        else:
            harm_mask[:, j] = (_cos(phi[:, j], edit.harm[j]) >= 0) & valid_x
    return help_mask, harm_mask


class Gate:
    """The bound edit of one layer for one batch: a :data:`~icon2_lens.model.hooks.ResidualFn`."""

    def __init__(
        self,
        edit: AlignEZEdit,
        j: int,
        help_mask: Tensor,
        harm_mask: Tensor,
        strength: float,
        positions: str,
        prompt_len: int,
        rows: RowSelection,
    ) -> None:
        self.help_dirs, self.harm_dirs = edit.help[j], edit.harm[j]
        self.center = edit.center[j] if edit.config.center else torch.zeros(edit.d_model)
        self.tau, self.push = float(edit.tau()[j]), float(edit.push()[j])
        self.help_mask, self.harm_mask = help_mask.float(), harm_mask.float()
        self.strength, self.positions, self.prompt_len, self.rows = (
            strength,
            positions,
            prompt_len,
            rows,
        )
        self.calls = 0

    def __call__(self, resid: Tensor) -> Tensor:
        hm, xm = self.help_mask, self.harm_mask
        if self.rows.index is not None:
            hm, xm = hm[self.rows.index], xm[self.rows.index]
        if hm.shape[0] != resid.shape[0]:
            raise ValueError(
                f"the AlignEZ edit holds masks for {hm.shape[0]} rows but the batch has "
                f"{resid.shape[0]}: pass one query per batch row"
            )
        first = self.calls == 0
        self.calls += 1
        start = edit_start(self.positions, resid, self.prompt_len, first)
        edited = gated_edit(
            resid,
            self.help_dirs,
            self.harm_dirs,
            hm,
            xm,
            center=self.center,
            tau=self.tau,
            push=self.push,
            strength=self.strength,
        )
        if start is None:
            return edited
        # Full-sequence call: edit from the last prompt position on (its output is the first
        # generated token, which must be edited too).
        keep = torch.zeros(resid.shape[1], 1, dtype=torch.bool, device=resid.device)
        keep[start:] = True
        return torch.where(keep, edited, resid)


def _strength(edit: AlignEZEdit, strength: float | None) -> float:
    s = edit.config.strength if strength is None else strength
    return check_finite("strength", s)


class AlignEZEditor:
    """A :class:`~icon2_lens.model.hooks.ResidualEditor` applying an AlignEZ edit with per-prompt masks.

    The prompts' last-token residuals ``Φ`` are read once here (or passed as ``query_residuals``)
    and turned into each prompt's kept-direction masks (:func:`filter_directions`); :meth:`bind`
    slices them for a batch, and the hooks follow :class:`~icon2_lens.model.hooks.RowSelection` as
    rows finish. With strength 0 it has no hook names and binds nothing.

    Args:
        model: The bridge.
        edit: The fitted edit (checked against ``model``).
        prompts: Rendered prompts, in the order :func:`~icon2_lens.model.generate.generate` gets them.
        strength: ``s``; ``None`` for ``edit.config.strength``.
        query_residuals: ``[n, layer, d_model]`` ``Φ`` at ``edit.layers`` instead of ``prompts``.
        check_fingerprint: Require the edit's model to have bit-identical weights.
        batch_size: Prompts per forward pass when reading ``Φ``.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> from icon2_lens.model.chat import render_chat
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
        >>> editor = AlignEZEditor(model, edit, [render_chat(model.tokenizer, "tell me a story")])
        >>> editor.hook_names, editor.help_kept.shape
        (('blocks.1.hook_resid_post',), torch.Size([1]))
    """

    def __init__(
        self,
        model: LensModel,
        edit: AlignEZEdit,
        prompts: Sequence[str] | None = None,
        *,
        strength: float | None = None,
        query_residuals: Float[Tensor, "n layer d_model"] | None = None,
        check_fingerprint: bool = True,
        batch_size: int = 16,
    ) -> None:
        self.strength = _strength(edit, strength)
        check_edit(edit, model, check_fingerprint=check_fingerprint)
        self.edit = edit
        if (prompts is None) == (query_residuals is None):
            raise ValueError("pass either prompts or query_residuals")
        if prompts is not None and len(prompts) == 0:
            raise ValueError("no prompts: pass at least one")
        n = len(prompts) if prompts is not None else query_residuals.shape[0]
        n_layers, k, _ = edit.help.shape
        self.hook_names: tuple[str, ...] = ()
        self.help_mask = torch.zeros(n, n_layers, k, dtype=torch.bool)
        self.harm_mask = torch.zeros_like(self.help_mask)
        if self.strength == 0.0:
            return  # nothing attached: the model runs exactly as without the editor
        names = edit.hook_names
        validate_hook_names(model, names)
        if query_residuals is None:
            query_residuals = collect_resid(
                model,
                list(prompts),
                layers=list(edit.layers),
                site=SITE,
                batch_size=batch_size,
                progress=False,
                backend="fast",
                desc="query residuals",
            )
        self.help_mask, self.harm_mask = filter_directions(edit, query_residuals)
        self.hook_names = tuple(names)

    @property
    def help_kept(self) -> Tensor:
        """``[n]`` kept help directions per prompt, summed over layers."""
        return self.help_mask.sum(dim=(1, 2))

    @property
    def harm_kept(self) -> Tensor:
        """``[n]`` kept harm directions per prompt, summed over layers."""
        return self.harm_mask.sum(dim=(1, 2))

    def check(self, model: LensModel, n_rows: int) -> None:  # noqa: ARG002 - the masks are per prompt, not per row
        """Raise before any work if the edited hook points do not exist on ``model``."""
        validate_hook_names(model, list(self.hook_names))

    def bind(
        self, rows: RowSelection, row_ids: Sequence[int], prompt_len: int
    ) -> list[tuple[str, Any]]:
        """One gate per edited layer for the batch of prompts ``row_ids`` (see ``ResidualEditor``)."""
        return self._bind(rows, row_ids, prompt_len, self.edit.config.positions)

    def _bind(self, rows: RowSelection, row_ids: Sequence[int], prompt_len: int, positions: str):
        if not self.hook_names:
            return []
        ids = torch.as_tensor(list(row_ids), dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.help_mask.shape[0]):
            raise ValueError(
                f"row ids {ids.tolist()} are outside the editor's {self.help_mask.shape[0]} prompts"
            )
        return [
            (
                name,
                Gate(
                    self.edit,
                    j,
                    self.help_mask[ids, j],
                    self.harm_mask[ids, j],
                    self.strength,
                    positions,
                    prompt_len,
                    rows,
                ),
            )
            for j, name in enumerate(self.hook_names)
        ]


@contextmanager
def alignez(
    model: LensModel,
    edit: AlignEZEdit,
    queries: Sequence[str] | Float[Tensor, "n layer d_model"],
    *,
    strength: float | None = None,
) -> Iterator[AlignEZEditor]:
    """Context manager: forward passes of the bridge edited inside the block, untouched after.

    Row ``i`` of every batch is edited with the masks of query ``i`` (so each batch must have
    one row per query), at every position of every forward pass. Hooks are built before they
    are attached and removed on exit, also when the block raises.

    Args:
        model: The bridge.
        edit: The fitted edit.
        queries: Rendered prompts (their ``Φ`` is read here) or ``[n, layer, d_model]`` ``Φ``.
        strength: ``s``; ``None`` for ``edit.config.strength``.

    Example:
        >>> import torch
        >>> from icon2_lens.testing import tiny_model
        >>> from icon2_lens.model.chat import render_chat
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1], resid_norm=50.0)
        >>> ids = torch.tensor([[1, 5, 6, 7]])
        >>> with alignez(model, edit, torch.randn(1, 1, 16), strength=0.0):
        ...     same = model(ids)
        >>> torch.equal(same, model(ids))
        True
    """
    if isinstance(queries, Tensor):
        editor = AlignEZEditor(model, edit, query_residuals=queries, strength=strength)
    else:
        editor = AlignEZEditor(model, edit, list(queries), strength=strength)
    n = editor.help_mask.shape[0]
    hooks = [
        (name, as_tl_hook(gate)) for name, gate in editor._bind(RowSelection(), range(n), 0, "all")
    ]
    with model.hooks(fwd_hooks=hooks):
        yield editor


def generate_alignez(
    model: LensModel,
    instructions: Sequence[str],
    edit: AlignEZEdit,
    decoding: Decoding | None = None,
    *,
    strength: float | None = None,
    batch_size: int = 16,
    progress: bool = False,
    backend: str = "auto",
) -> list[Generation]:
    """Answer each instruction (wrapped by the chat template) with the AlignEZ edit applied.

    Args:
        model: The bridge.
        instructions: User instructions.
        edit: The fitted edit.
        decoding: Decoding settings (greedy, 128 new tokens by default).
        strength: ``s``; ``None`` for ``edit.config.strength``; 0 gives exactly the unedited text.
        batch_size: Rows per forward pass.
        progress: Show a progress bar.
        backend: Generation backend (``auto``, ``fast``, ``bridge``).

    Returns:
        One :class:`~icon2_lens.model.generate.Generation` per instruction, in order.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> edit = AlignEZEdit.synthetic(torch.eye(2, 16).view(1, 2, 16), layers=[1])
        >>> out = generate_alignez(model, ["tell me a story"], edit, Decoding(max_new_tokens=4))
        >>> len(out), len(out[0].token_ids) <= 4
        (1, True)
    """
    if len(instructions) == 0:
        raise ValueError("no instructions to answer")
    tok = model.tokenizer
    prompts = [render_chat(tok, d) for d in instructions]
    editor = AlignEZEditor(model, edit, prompts, strength=strength, batch_size=batch_size)
    return generate(
        model,
        prompts,
        decoding,
        batch_size=batch_size,
        progress=progress,
        backend=backend,
        editors=[editor],
    )
