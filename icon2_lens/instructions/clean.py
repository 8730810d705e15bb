"""Cleaning of self-synthesized instructions, step by step, with a count after every step.

A small model fed only the user-turn prefix writes a lot that is not a usable instruction: empty
strings, text cut off by the token budget, template markup, answers or stories instead of
requests, loops, and many near-repeats. The steps, in order (each only sees what survived the
previous one):

``strip``
    Whitespace trimmed and collapsed, surrounding quotes removed; empty texts dropped.
``length``
    Outside ``[min_chars, max_chars]`` characters or under ``min_words`` words.
``incomplete``
    The sample hit the token budget (``finished=False``), or ends mid-sentence: on a comma,
    colon, semicolon, hyphen, an opening bracket or a conjunction, or with unbalanced brackets
    or quotes.
``leakage``
    Contains template markup: any of ``markers`` (the tokenizer's special tokens and role
    headers) or a generic role marker (``assistant:``, ``<|``, ``[INST]``, ``###``...).
``non_request``
    Not a question or request: kept texts end with ``?``, or open with a request word
    (``write``, ``explain``, ``how``, ``can you``, ``please``...), or contain a request phrase
    (``I need``, ``help me``...). Answers (``Sure``, ``Here is``, ``As an AI``...), repetition
    loops (few distinct words, or a repeated word trigram) and mostly non-letter or non-ASCII
    text are dropped too.
``exact_duplicate``
    Same text after lower-casing and removing punctuation and extra spaces; first kept.
``near_duplicate``
    Jaccard similarity of word-bigram shingles (word sets for texts under four words) at least
    ``near_duplicate`` with an earlier kept text; an inverted index over shingles makes this
    scale to tens of thousands of texts.

Example:
    >>> rep = clean_instructions(["How do I bake bread?", "how do I bake bread", "Sure, here it is",
    ...                           "Write a poem about", "Explain why the sky is blue."])
    >>> rep.kept
    ['How do I bake bread?', 'Explain why the sky is blue.']
    >>> rep.counts["raw"], rep.counts["near_duplicate"]
    (5, 2)
"""

import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CleanReport", "clean_instructions", "normalize_instruction", "STEPS"]

STEPS: tuple[str, ...] = (
    "raw",
    "strip",
    "length",
    "incomplete",
    "leakage",
    "non_request",
    "exact_duplicate",
    "near_duplicate",
)

_POSTING_CAP = 256
_GENERIC_MARKERS = (
    "<|",
    "|>",
    "[inst]",
    "[/inst]",
    "###",
    "assistant:",
    "user:",
    "system:",
    "<s>",
    "</s>",
)
_REQUEST_OPENERS = (
    "write",
    "explain",
    "list",
    "describe",
    "give",
    "tell",
    "help",
    "how",
    "what",
    "why",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "whose",
    "can",
    "could",
    "would",
    "will",
    "should",
    "is",
    "are",
    "do",
    "does",
    "did",
    "please",
    "create",
    "generate",
    "summarize",
    "summarise",
    "translate",
    "compare",
    "suggest",
    "recommend",
    "find",
    "make",
    "design",
    "plan",
    "outline",
    "draft",
    "compose",
    "calculate",
    "solve",
    "define",
    "analyze",
    "analyse",
    "provide",
    "show",
    "name",
    "identify",
    "classify",
    "rewrite",
    "edit",
    "convert",
    "imagine",
    "pretend",
    "act",
    "brainstorm",
    "discuss",
    "evaluate",
    "predict",
    "estimate",
    "i'm",
    "im",
    "i",
    "my",
    "we",
    "in",
    "if",
    "as",
    "for",
    "given",
    "using",
    "let's",
    "lets",
)
_REQUEST_PHRASES = (
    "i need",
    "i want",
    "i would like",
    "i'd like",
    "help me",
    "i am looking",
    "i'm looking",
    "can you",
    "could you",
    "would you",
    "please",
    "i wonder",
    "any tips",
    "any advice",
)
_ANSWER_OPENERS = (
    "sure",
    "here is",
    "here are",
    "here's",
    "as an ai",
    "as a language model",
    "i'm sorry",
    "i am sorry",
    "yes",
    "no",
    "certainly",
    "of course",
    "thank you",
    "thanks",
    "okay",
    "ok",
    "hello",
    "hi",
    "great question",
    "absolutely",
)
_DANGLING = (
    "and",
    "or",
    "but",
    "the",
    "a",
    "an",
    "to",
    "of",
    "with",
    "for",
    "in",
    "on",
    "that",
    "which",
    "because",
    "so",
    "as",
    "if",
    "my",
    "your",
    "is",
    "are",
    "about",
    "like",
    "from",
    "into",
    "than",
)


@dataclass
class CleanReport:
    """What survived cleaning and why the rest did not.

    Attributes:
        kept: Clean instructions, in input order.
        kept_index: Their positions in the input.
        counts: Number surviving after each step of :data:`STEPS` (``raw`` = input size).
        dropped: ``(input index, step)`` for every dropped text.
    """

    kept: list[str] = field(default_factory=list)
    kept_index: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A small table: step, surviving, dropped by the step."""
        lines = [f"{'step':<16}{'kept':>8}{'dropped':>9}"]
        prev = None
        for step, n in self.counts.items():
            lines.append(f"{step:<16}{n:>8}{'' if prev is None else prev - n:>9}")
            prev = n
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "kept": list(self.kept),
            "kept_index": list(self.kept_index),
            "dropped": [list(d) for d in self.dropped],
        }


def normalize_instruction(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces (the key for exact duplicates).

    Example:
        >>> normalize_instruction("  How do I   bake bread?! ")
        'how do i bake bread'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def _strip(text: str) -> str:
    text = " ".join(text.split())
    for _ in range(2):
        if len(text) >= 2 and text[0] in "\"'“‘«" and text[-1] in "\"'”’»":
            text = text[1:-1].strip()
    return text


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _incomplete(text: str) -> bool:
    if text[-1] in ",:;-–—([{/\\":
        return True
    words = _words(text)
    if words and words[-1] in _DANGLING and text[-1].isalnum():
        return True
    for a, b in ("()", "[]", "{}"):
        if text.count(a) != text.count(b):
            return True
    return text.count('"') % 2 == 1 or text.count("“") != text.count("”")


def _leaks(text: str, markers: Sequence[str]) -> bool:
    low = text.lower()
    return any(m.lower() in low for m in markers if m) or any(m in low for m in _GENERIC_MARKERS)


def _loop(words: list[str]) -> bool:
    if len(words) >= 8 and len(set(words)) / len(words) < 0.4:
        return True
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    counts: dict[tuple, int] = defaultdict(int)
    for g in grams:
        counts[g] += 1
    return bool(grams) and max(counts.values()) >= 3


def _is_request(text: str) -> bool:
    low = text.lower()
    letters = sum(c.isalpha() for c in text)
    if letters < 0.6 * len(text.replace(" ", "")) or sum(ord(c) > 127 for c in text) > 0.2 * len(
        text
    ):
        return False
    words = _words(text)
    if _loop(words):
        return False
    if any(
        low.startswith(a) and (len(low) == len(a) or not low[len(a)].isalpha())
        for a in _ANSWER_OPENERS
    ):
        return False
    if text.endswith("?"):
        return True
    if words and words[0] in _REQUEST_OPENERS:
        return True
    return any(p in low for p in _REQUEST_PHRASES)


def _shingles(text: str) -> frozenset:
    words = normalize_instruction(text).split()
    if len(words) < 4:
        return frozenset((w,) for w in words)
    return frozenset(tuple(words[i : i + 2]) for i in range(len(words) - 1))


def clean_instructions(
    texts: Sequence[str],
    *,
    finished: Sequence[bool] | None = None,
    min_chars: int = 10,
    max_chars: int = 500,
    min_words: int = 3,
    near_duplicate: float = 0.6,
    markers: Sequence[str] = (),
) -> CleanReport:
    """Clean raw instructions (see the module docstring for the steps).

    Args:
        texts: Raw samples.
        finished: Per sample, whether it reached the end of the turn (``False`` = cut off).
        min_chars, max_chars, min_words: Length bounds.
        near_duplicate: Jaccard threshold in ``(0, 1]`` for near duplicates.
        markers: Template pieces that must not appear (special tokens, role headers).

    Raises:
        ValueError: ``finished`` of another length, or inconsistent thresholds.
    """
    if finished is not None and len(finished) != len(texts):
        raise ValueError(
            f"finished has {len(finished)} entries for {len(texts)} texts: pass one per text"
        )
    if not 0 < near_duplicate <= 1:
        raise ValueError(f"near_duplicate must be in (0, 1], got {near_duplicate}")
    if min_chars > max_chars or min_chars < 0 or min_words < 0:
        raise ValueError(
            f"bad length bounds: min_chars={min_chars}, max_chars={max_chars}, min_words={min_words}"
        )
    report = CleanReport()
    report.counts["raw"] = len(texts)
    alive: list[tuple[int, str]] = []
    for i, t in enumerate(texts):
        s = _strip(t)
        if s:
            alive.append((i, s))
        else:
            report.dropped.append((i, "strip"))
    report.counts["strip"] = len(alive)

    def step(name: str, keep) -> None:
        nonlocal alive
        survivors = []
        for i, s in alive:
            if keep(i, s):
                survivors.append((i, s))
            else:
                report.dropped.append((i, name))
        alive = survivors
        report.counts[name] = len(alive)

    step("length", lambda i, s: min_chars <= len(s) <= max_chars and len(s.split()) >= min_words)
    step("incomplete", lambda i, s: (finished is None or bool(finished[i])) and not _incomplete(s))
    step("leakage", lambda i, s: not _leaks(s, markers))
    step("non_request", lambda i, s: _is_request(s))
    seen: set[str] = set()

    def first_time(i: int, s: str) -> bool:
        key = normalize_instruction(s)
        if key in seen:
            return False
        seen.add(key)
        return True

    step("exact_duplicate", first_time)
    index: dict[tuple, list[int]] = defaultdict(list)
    kept_shingles: list[frozenset] = []

    def novel(i: int, s: str) -> bool:
        sh = _shingles(s)
        # Candidates come from the rarer shingles: a text with Jaccard >= threshold shares most
        # shingles, so it shares rare ones too; very common ones ("how do") would make it O(n^2).
        lists = sorted((index[g] for g in sh), key=len)
        rare = [lst for lst in lists if len(lst) <= _POSTING_CAP] or lists
        candidates = {k for lst in rare for k in lst}
        for k in candidates:
            other = kept_shingles[k]
            inter = len(sh & other)
            union = len(sh) + len(other) - inter
            if union and inter / union >= near_duplicate:
                return False
        k = len(kept_shingles)
        kept_shingles.append(sh)
        for g in sh:
            index[g].append(k)
        return True

    step("near_duplicate", novel)
    report.kept = [s for _, s in alive]
    report.kept_index = [i for i, _ in alive]
    return report
