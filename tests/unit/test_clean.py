import random
import time

import pytest

from icon2_lens.instructions.clean import STEPS, clean_instructions, normalize_instruction

GOOD = [
    "How do I make a sourdough starter at home?",
    "Write a short poem about autumn leaves falling in the park.",
    "Explain the difference between a virus and a bacterium.",
    "Can you suggest a weekend itinerary for Lisbon on a budget?",
    "I need help writing a polite email to my landlord about a leak.",
]
JUNK = {
    "strip": ["   ", '""'],
    "length": ["Why?", "Tell me"],
    "incomplete": [
        "What are the main causes of the French Revolution and",
        "List three ways to save money, such as",
    ],
    "leakage": [
        "<|im_start|>user How do I fix my bike?",
        "assistant: What is the capital of Peru?",
    ],
    "non_request": [
        "Sure, here is the recipe you asked for.",
        "The weather was lovely and we walked home.",
        "go go go go go go go go go go go go go go",
    ],
}


def test_each_step_drops_its_junk_and_keeps_requests():
    texts = GOOD + [t for junk in JUNK.values() for t in junk]
    rep = clean_instructions(texts, markers=["<|im_start|>"])
    assert rep.kept == GOOD and rep.kept_index == list(range(len(GOOD)))
    by_step = {}
    for i, step in rep.dropped:
        by_step.setdefault(step, []).append(texts[i])
    for step, junk in JUNK.items():
        assert sorted(by_step[step]) == sorted(junk), step
    assert list(rep.counts) == list(STEPS)
    values = list(rep.counts.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] - values[-1] == len(rep.dropped)


def test_unfinished_and_duplicates():
    texts = [
        GOOD[0],
        GOOD[1],
        GOOD[0].upper(),
        GOOD[1].replace("autumn", "winter"),
        GOOD[2],
        GOOD[3],
    ]
    rep = clean_instructions(texts, finished=[True, True, True, True, False, True])
    assert rep.kept == [GOOD[0], GOOD[1], GOOD[3]]
    assert dict((i, s) for i, s in rep.dropped) == {
        2: "exact_duplicate",
        3: "near_duplicate",
        4: "incomplete",
    }
    # same topic, different request: kept
    rep2 = clean_instructions(
        ["How do I bake bread at home?", "What flour is best for baking bread?"]
    )
    assert len(rep2.kept) == 2
    assert normalize_instruction(" How DO i, bake? ") == "how do i bake"
    assert "exact_duplicate" in rep.summary() and rep.to_dict()["counts"] == rep.counts


def test_deterministic_and_scales():
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(6)) for _ in range(3000)]
    base = [
        "How do I " + " ".join(rng.choice(vocab) for _ in range(12)) + "?" for _ in range(18000)
    ]
    planted = []
    for t in base[:2000]:
        words = t[:-1].split()
        words[5] = "changed"
        planted.append(" ".join(words) + "?")
    texts = base + planted
    t0 = time.perf_counter()
    rep = clean_instructions(texts)
    elapsed = time.perf_counter() - t0
    assert (
        rep.counts["near_duplicate"] == 18000
    )  # every planted near-duplicate removed, nothing else
    assert all(step == "near_duplicate" for i, step in rep.dropped)
    assert elapsed < 30
    assert clean_instructions(texts[:500]).kept == rep.kept[:500]


def test_bad_arguments():
    with pytest.raises(ValueError, match="one per text"):
        clean_instructions(["a b c d"], finished=[True, False])
    with pytest.raises(ValueError, match="near_duplicate"):
        clean_instructions(["a"], near_duplicate=0.0)
    with pytest.raises(ValueError, match="length bounds"):
        clean_instructions(["a"], min_chars=50, max_chars=10)
