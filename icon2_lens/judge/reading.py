"""Judges that read the unsteered model's residual stream or likelihood over a response.

``score_responses`` gives the inherent score (the residual stream over the response, projected
on the criterion's direction and averaged over layers) and the NLL per response token;
:class:`InherentJudge` and :class:`FluencyJudge` wrap them as pointwise judges.
:class:`RelevanceJudge` reads the likelihood of the answer with and without its request (pointwise
mutual information), no direction at all.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from icon2_lens._types import LensModel
from icon2_lens.consistency.scores import score_consistency
from icon2_lens.directions.set import DirectionSet
from icon2_lens.model.read import REPEAT_NGRAM, check_skip_repeats, read_responses

from .base import Scores, check_lengths

__all__ = [
    "score_responses",
    "InherentJudge",
    "FluencyJudge",
    "PeerFluencyJudge",
    "PEER_MODEL",
    "PLAIN_CHAT_TEMPLATE",
    "RelevanceJudge",
    "RELEVANCE_REFERENCE",
]


def score_responses(
    model: LensModel,
    instructions: Sequence[str],
    responses: Sequence[str],
    directions: Sequence[DirectionSet],
    *,
    layers: Sequence[Sequence[int]] | None = None,
    read: str = "mean",
    batch_size: int = 8,
    backend: str = "auto",
    nll: bool = True,
    progress: bool = False,
) -> dict[str, Float[Tensor, " n"]]:
    """Inherent score and NLL of each response under the unsteered model.

    Args:
        model: The (unsteered) bridge.
        instructions: One user instruction per response.
        responses: The responses to judge.
        directions: One direction set per response (its criterion's).
        layers: Per response, the layers to average the projection over (default: all of the set's).
        read: Where the residual is read: ``mean`` (default: averaged over every response
            token) or ``last`` (the response's last token, as inherent consistency reads an
            instruction). On the embedded model the mean reading follows the steering strength
            far more faithfully (median per-instruction Spearman correlation between γ and score
            0.94-0.97 against 0.76-0.88 for ``last``, 40 instructions × 10 γ × 3 intervals). An
            empty response is read at the prompt's last token either way.
        batch_size: Rows per forward pass.
        backend: See :func:`read_responses`.
        nll: Compute the NLL too (``False``: projection only, cheaper; ``nll`` is NaN).
        progress: Show a progress bar.

    Returns:
        ``projection``, ``nll`` (mean per response token; NaN for an empty response) and
        ``n_tokens``, each ``[n]``.
    """
    n = len(responses)
    if not (len(instructions) == n == len(directions)):
        raise ValueError("instructions, responses and directions must have the same length")
    if n == 0:
        raise ValueError("no responses to score")
    layers = [list(ds.layers) for ds in directions] if layers is None else [list(x) for x in layers]
    sites = {ds.site for ds in directions}
    if len(sites) != 1:
        raise ValueError("all direction sets must be read at the same site")
    need = sorted({layer for ls in layers for layer in ls})
    res = read_responses(
        model,
        instructions,
        responses,
        layers=need,
        site=sites.pop(),
        read=read,
        batch_size=batch_size,
        backend=backend,
        nll=nll,
        progress=progress,
    )
    projection = torch.zeros(n)
    for i, ds in enumerate(directions):
        idx = [need.index(x) for x in layers[i]]
        u = torch.stack([ds[x] for x in layers[i]]).to(torch.float32)
        projection[i] = (res.readings[i, idx] * u).sum(-1).mean()
    return {"projection": projection, "nll": res.nll, "n_tokens": res.n_tokens}


class InherentJudge:
    """The unsteered model's reading of the response along its instruction's criterion direction.

    The residual stream over the response tokens (``read="mean"``) or at its last token
    (``read="last"``), the instruction wrapped by the chat template before it, is dotted with the
    criterion's unit direction at each layer and averaged over the layers (see
    :func:`icon2_lens.model.read.read_responses`). The criterion of each instruction is the one passed
    to :meth:`score` or, by default, its argmax criterion under inherent consistency
    (:func:`icon2_lens.consistency.scores.score_consistency`, default ``dot`` scoring over all layers),
    remembered per instruction across calls. An empty response is NaN: there is nothing of it to read.

    Args:
        model: The unsteered bridge the directions were extracted from.
        direction_sets: Criterion -> its direction set (a sequence of sets is accepted too).
        layers: Layers the projection averages over: one list for every criterion, a mapping
            criterion -> list, or ``None`` for each set's layers.
        criteria: The criteria that compete for an instruction (default: all of the sets).
        read: ``mean`` or ``last``.
        batch_size: Rows per forward pass.

    Example:
        >>> import torch
        >>> from icon2_lens.testing import tiny_model
        >>> ds = DirectionSet(criterion="toy", layers=(1, 2), vectors=torch.eye(2, 16))
        >>> judge = InherentJudge(tiny_model(), {"toy": ds})
        >>> judge.score(["tell me a story", "help me"], ["the cat sat on the mat", ""]).shape
        (2,)
        >>> judge.last_criteria
        ['toy', 'toy']
    """

    name = "inherent"
    kind: Literal["pointwise"] = "pointwise"

    def __init__(
        self,
        model: LensModel,
        direction_sets: Mapping[str, DirectionSet] | Sequence[DirectionSet],
        *,
        layers: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
        criteria: Sequence[str] | None = None,
        read: str = "mean",
        batch_size: int = 16,
    ) -> None:
        sets = (
            dict(direction_sets)
            if isinstance(direction_sets, Mapping)
            else {ds.criterion: ds for ds in direction_sets}
        )
        if not sets:
            raise ValueError("the inherent judge needs at least one direction set")
        if criteria is not None:
            unknown = [c for c in criteria if c not in sets]
            if unknown or not criteria:
                raise ValueError(
                    f"criteria {unknown or list(criteria)} have no direction set; have {sorted(sets)}"
                )
            sets = {c: sets[c] for c in criteria}
        sites = {ds.site for ds in sets.values()}
        if len(sites) != 1:
            raise ValueError(
                f"direction sets read at different sites {sorted(sites)}; use one site"
            )
        self.model = model
        self.direction_sets = sets
        self.site = sites.pop()
        self.layers = {c: self._layers_of(ds, layers) for c, ds in sets.items()}
        self.read = read
        self.batch_size = batch_size
        self.last_criteria: list[str] = []
        self._criterion_of: dict[str, str] = {}

    @staticmethod
    def _layers_of(
        ds: DirectionSet, layers: Mapping[str, Sequence[int]] | Sequence[int] | None
    ) -> list[int]:
        if layers is None:
            return list(ds.layers)
        chosen = list(layers[ds.criterion]) if isinstance(layers, Mapping) else list(layers)
        missing = [x for x in chosen if x not in ds.layers]
        if missing or not chosen:
            raise ValueError(
                f"layers {missing or chosen} are not in the {ds.criterion!r} direction set"
            )
        return chosen

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def description(self) -> str:
        where = (
            "averaged over the response tokens"
            if self.read == "mean"
            else "at the response's last token"
        )
        return (
            f"the unsteered model's residual stream {where}, projected on the instruction's criterion "
            "direction (argmax inherent consistency) and averaged over layers; higher = further towards "
            "the criterion's positive prompt"
        )

    def criteria_for(self, instructions: Sequence[str]) -> list[str]:
        """The argmax consistency criterion of each instruction (computed once per distinct instruction)."""
        todo = sorted({d for d in instructions if d not in self._criterion_of})
        if todo:
            if len(self.direction_sets) == 1:
                best = [next(iter(self.direction_sets))] * len(todo)
            else:
                best = score_consistency(
                    self.model,
                    todo,
                    list(self.direction_sets.values()),
                    batch_size=self.batch_size,
                    progress=False,
                ).best_criterion
            self._criterion_of.update(zip(todo, best))
        return [self._criterion_of[d] for d in instructions]

    def score(
        self,
        instructions: Sequence[str],
        responses: Sequence[str],
        *,
        criteria: Sequence[str] | None = None,
    ) -> Scores:
        """Projection of each response on its criterion's direction (NaN for an empty response).

        Args:
            instructions: One instruction per response.
            responses: The responses.
            criteria: The criterion to read each response along (default: the instruction's
                argmax consistency criterion).
        """
        n = check_lengths(instructions, responses)
        if criteria is not None and len(criteria) != n:
            raise ValueError(f"{len(criteria)} criteria for {n} responses")
        if n == 0:
            return np.empty(0)
        crit = list(criteria) if criteria is not None else self.criteria_for(instructions)
        unknown = sorted(set(crit) - set(self.direction_sets))
        if unknown:
            raise ValueError(
                f"criteria {unknown} have no direction set; have {sorted(self.direction_sets)}"
            )
        self.last_criteria = crit
        need = sorted({x for c in set(crit) for x in self.layers[c]})
        res = read_responses(
            self.model,
            instructions,
            responses,
            layers=need,
            site=self.site,
            read=self.read,
            batch_size=self.batch_size,
            nll=False,
        )
        out = np.full(n, np.nan)
        for c in sorted(set(crit)):
            rows = [i for i, x in enumerate(crit) if x == c]
            proj = res.project(self.direction_sets[c], self.layers[c]).to(torch.float64).numpy()
            out[rows] = proj[rows]
        out[[i for i, r in enumerate(responses) if not r.strip()]] = np.nan
        return out


class FluencyJudge:
    """Minus the mean NLL per response token under the (unsteered) model; NaN for an empty response.

    Tokens that repeat the answer's own text (that complete a token ``skip_repeats``-gram already
    present earlier in it) are left out of the mean: a language model finds a repetition loop
    likely, so counted in full a looping answer reads as more fluent than one that goes on saying
    something new. With them left out, a loop scores what its first pass scores; whether an answer
    loops is the ``repetition`` and ``degeneration`` judges' reading. ``skip_repeats=0`` averages
    every token (the reading before this rule).

    Args:
        model: The bridge that reads.
        batch_size: Rows per forward pass.
        skip_repeats: ``n`` of the token n-grams whose repeats are left out; 0 keeps every token.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> s = FluencyJudge(tiny_model()).score(["tell me a story"] * 2, ["the cat sat on the mat", ""])
        >>> bool(s[0] < 0), bool(np.isnan(s[1]))
        (True, True)
    """

    name = "fluency"
    kind: Literal["pointwise"] = "pointwise"
    reader = "the unsteered model"

    def __init__(
        self, model: LensModel, *, batch_size: int = 8, skip_repeats: int = REPEAT_NGRAM
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.skip_repeats = check_skip_repeats(skip_repeats)

    @property
    def description(self) -> str:
        left_out = (
            f"tokens that repeat a {self.skip_repeats}-gram of the answer left out"
            if self.skip_repeats
            else "every token counted"
        )
        return (
            f"minus the mean negative log-likelihood per response token under {self.reader} "
            f"({left_out}), instruction in its chat template; higher = more fluent to that model"
        )

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> Scores:
        if check_lengths(instructions, responses) == 0:
            return np.empty(0)
        res = read_responses(
            self.model,
            instructions,
            responses,
            layers=[0],
            batch_size=self.batch_size,
            nll=True,
            skip_repeats=self.skip_repeats,
        )
        return -res.nll.to(torch.float64).numpy()


#: The second model :class:`PeerFluencyJudge` reads with by default (an embedded key).
PEER_MODEL = "gemma3-270m"

#: How a peer without a chat template of its own (a base model, such as the embedded Gemma) is
#: shown the request: plain "User:" / "Assistant:" turns.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


class PeerFluencyJudge(FluencyJudge):
    """Fluency read by a second model that wrote none of the answers compared.

    :class:`FluencyJudge` reads with the base model, and a greedy answer of the base model is, token
    by token, that model's most likely continuation: any system that answers differently loses
    likelihood under it whether or not its answer is worse. A model of another family and size has
    no such stake. Minus the mean NLL per response token under ``peer`` (its own tokenizer and chat
    template; a peer loaded here without one, a base model, reads plain "User:" / "Assistant:"
    turns, :data:`PLAIN_CHAT_TEMPLATE`); NaN for an empty response. When the judged systems come
    from the peer itself (a run on ``gemma3-270m``), pass another ``peer``. Repeats are left out
    as in :class:`FluencyJudge`.

    Args:
        model: Ignored (the judged model does not read); accepted so every judge is built alike.
        peer: An embedded key, HF directory or hub id (loaded on first use), or a loaded model.
        batch_size: Rows per forward pass.
        skip_repeats: ``n`` of the token n-grams whose repeats are left out; 0 keeps every token.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> judge = PeerFluencyJudge(peer=tiny_model(seed=1))
        >>> judge.score(["tell me a story"], ["the cat sat"]).shape
        (1,)
    """

    name = "peer_fluency"
    reader = f"a second model that wrote none of the answers ({PEER_MODEL} unless set)"

    def __init__(
        self,
        model: Any = None,
        *,
        peer: str | LensModel = PEER_MODEL,
        batch_size: int = 8,
        skip_repeats: int = REPEAT_NGRAM,
    ) -> None:
        self.peer = peer
        self.batch_size = batch_size
        self.skip_repeats = check_skip_repeats(skip_repeats)
        self._model = None if isinstance(peer, str) else peer

    @property
    def tokenizer(self) -> Any:
        """None: lengths for length control are counted in words, without loading the peer."""
        return None

    @property
    def model(self) -> LensModel:  # type: ignore[override]
        if self._model is None:
            from icon2_lens.model.load import load_model

            peer = load_model(self.peer)
            if not getattr(peer.tokenizer, "chat_template", None):
                peer.tokenizer.chat_template = PLAIN_CHAT_TEMPLATE  # our own copy, loaded above
            self._model = peer
        return self._model


#: The reference request of :class:`RelevanceJudge`: none at all (an empty user turn).
RELEVANCE_REFERENCE = ""


class RelevanceJudge:
    """How much more likely the answer is after its own request than after none: PMI per token.

    ``score = (log p(answer | instruction) − log p(answer | reference)) / n_tokens``, both under
    the unsteered model with the request in its chat template; the reference is an empty user
    turn by default. An answer that addresses its request gains from seeing it; a generic one
    (an apology, boilerplate, text about something else) gains little or loses. Reads the model's
    likelihood only, never a direction, so it is independent of the steering. NaN for an empty
    answer.

    Args:
        model: The (unsteered) bridge that judges.
        reference: The request the answer is compared against (empty by default).
        batch_size: Rows per forward pass.

    Example:
        >>> from icon2_lens.testing import tiny_model
        >>> s = RelevanceJudge(tiny_model()).score(["tell me a story"] * 2, ["the cat sat", ""])
        >>> bool(np.isfinite(s[0])), bool(np.isnan(s[1]))
        (True, True)
    """

    name = "relevance"
    kind: Literal["pointwise"] = "pointwise"

    def __init__(
        self, model: LensModel, *, reference: str = RELEVANCE_REFERENCE, batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.reference = reference
        self.batch_size = batch_size

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def description(self) -> str:
        ref = f"the request {self.reference!r}" if self.reference else "an empty request"
        return (
            "pointwise mutual information of request and answer under the unsteered model: "
            f"log p(answer | request) − log p(answer | {ref}), per answer token; reads the "
            "likelihood only, no direction; higher = the answer is more specific to its request"
        )

    def reference_nll(
        self, responses: Sequence[str], *, progress: bool = False
    ) -> Float[np.ndarray, " n"]:
        """Mean NLL per token of each response after the reference request."""
        res = read_responses(
            self.model,
            [self.reference] * len(responses),
            responses,
            layers=[0],
            batch_size=self.batch_size,
            nll=True,
            progress=progress,
        )
        return res.nll.to(torch.float64).numpy()

    def score(self, instructions: Sequence[str], responses: Sequence[str]) -> Scores:
        if check_lengths(instructions, responses) == 0:
            return np.empty(0)
        given = read_responses(
            self.model, instructions, responses, layers=[0], batch_size=self.batch_size, nll=True
        )
        return self.reference_nll(responses) - given.nll.to(torch.float64).numpy()
