"""What every baseline pair source shares: its settings, provenance, batch loop and cost totals.

Cost: every baseline record carries ``icon2_generated_samples`` (generations made for its
instruction) and ``icon2_generated_tokens`` (tokens generated, each row's stop token included:
one forward step each); :func:`with_cost` sums them over a directory (``samples``,
``generated_tokens``) with the number of responses a judge scored (``judged``). Icon² records do
not carry token counts, so for them the two responses are re-tokenised and the counts say so
(``generated_tokens_exact`` is ``False``).
"""

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tqdm.auto import tqdm

from icon2_lens._config import documented, option
from icon2_lens._types import LensModel
from icon2_lens.model.generate import BACKENDS, Decoding, Generation
from icon2_lens.model.load import model_fingerprint

from .records import KeptInstruction, PairsResult
from .store import PairStore

__all__ = [
    "BaselineConfig",
    "PAIRS_FORMAT",
    "sample_seed",
    "num",
    "spent",
    "baseline_settings",
    "provenance",
    "run_batches",
    "with_cost",
]

PAIRS_FORMAT = "icon2-lens pairs v1"


@documented
@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    """How the baseline pairs are made; the fields that change them go to ``settings.json``.

    Sample ``k`` of instruction ``i`` draws from the row seed :func:`sample_seed` ``(i, k)``.

    Example:
        >>> sorted(BaselineConfig().settings("sp"))
        ['greedy_decoding', 'max_repetition']
        >>> BaselineConfig(n_samples=1)
        Traceback (most recent call last):
        ...
        ValueError: n_samples must be an integer >= 2 (best and worst of several samples), got 1
    """

    n_samples: int = option(
        5, help="samples per instruction for the ranking sources (the papers' baselines use 5)"
    )
    temperature: float = option(0.8, help="sampling temperature of those samples")
    top_p: float = option(0.95, help="nucleus mass of those samples")
    max_new_tokens: int = option(
        128, help="answer budget in tokens (samples and system-prompt answers)"
    )
    seed: int = option(0, help="decoding seed")
    sp_do_sample: bool = option(
        False,
        help="sample the system-prompt (sp) answers too instead of greedy decoding; "
        "chosen and rejected then share their instruction's seed",
    )
    batch_size: int = option(
        8, help="instructions per batch (n_samples rows each for ranking, two for sp)"
    )
    max_repetition: float = option(
        0.5, help="repeated-4-gram rate above which a response counts as degenerate"
    )
    backend: Literal["auto", "fast", "bridge"] = option(
        "auto", help="generation backend; does not change results"
    )

    def __post_init__(self) -> None:
        if (
            isinstance(self.n_samples, bool)
            or not isinstance(self.n_samples, int)
            or self.n_samples < 2
        ):
            raise ValueError(
                f"n_samples must be an integer >= 2 (best and worst of several samples), got {self.n_samples!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"max_repetition must be in [0, 1], got {self.max_repetition}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        self.sample_decoding  # noqa: B018 - validates the decoding fields

    @property
    def sample_decoding(self) -> Decoding:
        """The decoding of the ranking sources' samples (always sampling)."""
        return Decoding(
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    @property
    def greedy_decoding(self) -> Decoding:
        """The decoding of the system-prompt answers (greedy unless ``sp_do_sample``)."""
        if self.sp_do_sample:
            return self.sample_decoding
        return Decoding(max_new_tokens=self.max_new_tokens, seed=self.seed)

    def settings(self, source: str | None = None) -> dict[str, Any]:
        """The settings that change the pairs of ``source`` (all sources' when ``None``).

        The batch size and backend never change them and are left out.
        """
        out: dict[str, Any] = {
            "n_samples": self.n_samples,
            "sample_decoding": self.sample_decoding.to_dict(),
            "greedy_decoding": self.greedy_decoding.to_dict(),
            "max_repetition": self.max_repetition,
        }
        if source == "sp":
            del out["n_samples"], out["sample_decoding"]
        elif source in ("sampling_ranking", "self_rewarding"):
            del out["greedy_decoding"]
        return out


def sample_seed(index: int, k: int) -> int:
    """The row seed of sample ``k`` of instruction ``index`` (a 56-bit hash of both).

    It depends on nothing else, so a sample is the same whatever the batch, the number of
    samples or the instructions around it.

    Example:
        >>> sample_seed(3, 0) == sample_seed(3, 0) != sample_seed(3, 1)
        True
    """
    digest = hashlib.blake2b(f"{int(index)}/{int(k)}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


def num(x: float) -> float | None:
    """A finite float, or ``None`` (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def spent(g: Generation) -> int:
    """Tokens generated for one row: its tokens plus the stop token when it finished."""
    return len(g.token_ids) + int(g.finished)


def baseline_settings(
    model: LensModel, source: str, config: BaselineConfig, **extra: Any
) -> dict[str, Any]:
    return {
        "format": PAIRS_FORMAT,
        "source": source,
        "baseline_config": config.settings(source),
        "model": getattr(model.cfg, "model_name", None),
        "model_fingerprint": model_fingerprint(model),
        **extra,
    }


def provenance(source: str, settings: Mapping[str, Any], decoding: Decoding) -> dict[str, Any]:
    return {
        "icon2_source": source,
        "icon2_max_new_tokens": decoding.max_new_tokens,
        "icon2_do_sample": decoding.do_sample,
        "icon2_temperature": decoding.temperature,
        "icon2_top_p": decoding.top_p,
        "icon2_seed": decoding.seed,
        "icon2_model": settings["model"],
        "icon2_model_fingerprint": settings["model_fingerprint"],
    }


def run_batches(
    store: PairStore,
    kept: Sequence[KeptInstruction],
    batch_size: int,
    make_batch: Callable[
        [list[KeptInstruction]], tuple[list[dict[str, Any]], list[dict[str, Any]]]
    ],
    *,
    desc: str,
    progress: bool,
    limit: int | None,
    tokenizer: Any,
) -> PairsResult:
    for n_batch, batch in enumerate(
        tqdm(
            store.todo(kept, batch_size),
            desc=desc,
            unit="batch",
            disable=not (progress and store.shard.main),
        )
    ):
        if limit is not None and n_batch >= limit:
            break
        store.add(*make_batch(batch))
    return with_cost(store.result(), tokenizer)


def with_cost(result: PairsResult, tokenizer: Any) -> PairsResult:
    """Add ``samples``, ``generated_tokens``, ``judged`` (and sample quality totals) to the counts."""
    samples = tokens = judged = degenerate = unscorable = 0
    exact = True
    for r in result.records + result.dropped:
        if "icon2_generated_tokens" in r:
            samples += r["icon2_generated_samples"]
            tokens += r["icon2_generated_tokens"]
        else:  # an Icon² record: two generations, counted by re-tokenising them
            exact = False
            samples += 2
            for side in ("chosen", "rejected"):
                ids = tokenizer(r[side][0]["content"], add_special_tokens=False)["input_ids"]
                tokens += len(ids) + int(bool(r.get(f"icon2_{side}_finished")))
        judged += r.get("icon2_judged", 0)
        degenerate += r.get("icon2_degenerate_samples", 0)
        unscorable += r.get("icon2_unscorable_samples", 0)
    result.counts.update(
        samples=samples, generated_tokens=tokens, generated_tokens_exact=exact, judged=judged
    )
    if any("icon2_n_samples" in r for r in result.records + result.dropped):
        result.counts["degenerate_sample_rate"] = degenerate / samples if samples else float("nan")
        result.counts["unscorable_sample_rate"] = unscorable / samples if samples else float("nan")
    return result
