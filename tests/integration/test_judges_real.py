"""The judges that read no direction, on the embedded model: planted answers ranked as planted."""

import numpy as np

from icon2_lens.judge.reading import RelevanceJudge
from icon2_lens.judge.self_judges import SelfPairwiseJudge

REQUESTS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Name three primary colours.",
    "How many legs does a spider have?",
]
ON_TOPIC = [
    "The capital of France is Paris.",
    "Put the egg in boiling water for about eight minutes, then cool it in cold water.",
    "Red, yellow and blue are the three primary colours.",
    "A spider has eight legs.",
]
OFF_TOPIC = [
    "Bananas are a good source of potassium.",
    "The stock market closed higher on Tuesday.",
    "My favourite season is autumn because of the leaves.",
    "Python is a popular programming language.",
]


def test_relevance_prefers_the_answer_to_the_request(smol):
    judge = RelevanceJudge(smol)
    on, off = judge.score(REQUESTS, ON_TOPIC), judge.score(REQUESTS, OFF_TOPIC)
    assert np.all(on > off), (on, off)
    assert np.all(on > 0)  # the request makes its own answer more likely


def test_the_pairwise_self_judge_answers_with_a_letter(smol):
    judge = SelfPairwiseJudge(smol)
    p = judge.prefer(REQUESTS, ON_TOPIC, OFF_TOPIC)
    assert judge.last_label_mass > 0.5  # the verdict lands on the letters
    assert 0.3 < judge.last_position_bias < 0.7
    assert np.allclose(judge.prefer(REQUESTS, OFF_TOPIC, ON_TOPIC), 1 - p)
