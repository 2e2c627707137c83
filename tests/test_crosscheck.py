"""CrossCheck scoring: sentences, the object-mention measure, softmax weighting, aggregation, P(no) on a tiny LVLM."""

from __future__ import annotations

import math

import pytest
from PIL import Image
from tiny_models import build_tiny

from benchmarks.consistency import (
    ObjectMentionMeasure,
    Sentence,
    aggregate,
    answer_token_ids,
    explicit_raw,
    implicit_raw,
    judge_objects,
    sentences_of,
    softmax_weights,
)
from benchmarks.crosscheck import CrossCheckSettings, parse_system
from halluc.errors import ConfigError


def test_sentences_carry_the_objects_chair_counts() -> None:
    text = "A kitchen with a fork and a knife. There is a cup near the fork. The wall is beige."
    sentences = sentences_of(7, text)
    assert [s.objects for s in sentences] == [("fork", "knife"), ("cup", "fork"), ()]
    assert [s.index for s in sentences] == [0, 1, 2]
    assert sentences[1].text == "There is a cup near the fork."
    assert all(s.image_id == 7 for s in sentences)


def test_object_mention_measure_is_the_mean_unmentioned_share() -> None:
    measure = ObjectMentionMeasure()
    sentence = Sentence(1, 0, "A dog and a cat.", ("dog", "cat"))
    passages = ["A dog on the grass.", "A cat sits next to a dog.", "A bench in a park."]
    assert measure(sentence, passages) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert measure(Sentence(1, 1, "The sky is blue.", ()), passages) is None
    assert measure(sentence, []) is None
    assert measure.name == "object-mention"


def test_softmax_weights() -> None:
    assert softmax_weights({"a": 0.2, "b": 0.2}, 0.1) == {"a": 0.5, "b": 0.5}
    weights = softmax_weights({"a": 0.0, "b": 0.1, "c": 0.3}, 0.1)
    z = 1 + math.exp(-1) + math.exp(-3)
    assert weights == pytest.approx({"a": 1 / z, "b": math.exp(-1) / z, "c": math.exp(-3) / z})
    assert softmax_weights({"a": 0.0, "b": 1.0}, 10.0)["b"] == pytest.approx(1 / (1 + math.exp(0.1)))
    with pytest.raises(ConfigError, match="temperature must be > 0, got 0"):
        softmax_weights({"a": 0.0}, 0)


def test_aggregate_weights_combines_and_ranks() -> None:
    raw = {  # target -> evidence -> per-sentence scores
        "good": {"good": [0.0, 0.0], "bad": [0.5, None]},
        "bad": {"good": [1.0, 0.5, None], "bad": [0.5, 0.5, None]},
        "mute": {"good": [None], "bad": [None]},
    }
    result = aggregate(raw, temperature=0.5)
    assert result.self_inconsistency == {"good": 0.0, "bad": 0.5}
    w_good, w_bad = softmax_weights({"good": 0.0, "bad": 0.5}, 0.5).values()
    assert result.weights == pytest.approx({"good": w_good, "bad": w_bad})
    first = (w_bad * 0.5) / (w_good + w_bad)
    assert result.sentence_scores["good"] == pytest.approx([first, 0.0])  # None evidence: weights renormalised
    bad = [(w_good * 1.0 + w_bad * 0.5) / (w_good + w_bad), 0.5]
    assert result.sentence_scores["bad"][:2] == pytest.approx(bad)
    assert result.sentence_scores["bad"][2] is None and result.sentence_scores["mute"] == [None]
    assert result.scores["good"] == pytest.approx(first / 2)
    assert result.scores["bad"] == pytest.approx(sum(bad) / 2)
    assert result.scores["mute"] is None
    assert result.ranking == ["good", "bad", "mute"]


def test_an_evidence_system_without_scored_sentences_gets_self_inconsistency_one() -> None:
    raw = {"a": {"a": [0.0], "b": [1.0]}, "b": {"a": [None], "b": [None]}}
    assert aggregate(raw, temperature=0.1).self_inconsistency == {"a": 0.0, "b": 1.0}


def test_explicit_and_implicit_raw_scores() -> None:
    targets = {
        "t": [Sentence(1, 0, "A dog and a cat.", ("dog", "cat")), Sentence(2, 0, "A bench.", ("bench",))],
    }
    passages = {"e1": {1: ["A dog."], 2: ["A bench.", "A bird."]}, "e2": {1: ["A dog and a cat."]}}
    raw = explicit_raw(targets, passages, ObjectMentionMeasure())
    assert raw == {"t": {"e1": [0.5, 0.5], "e2": [0.0, None]}}  # e2 has no passage for image 2
    p_no = {"e1": {(1, "dog"): 0.2, (1, "cat"): 0.6, (2, "bench"): 0.1}}
    assert implicit_raw(targets, p_no) == {"t": {"e1": [pytest.approx(0.4), 0.1]}}


class _Tokenizer:
    def __init__(self, ids: dict[str, list[int]]) -> None:
        self.ids = ids

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.ids[text]


def test_answer_tokens_drop_first_tokens_shared_by_yes_and_no() -> None:
    space = 9  # e.g. a tokenizer that splits the leading space off: " Yes" -> [" ", "Yes"]
    ids = {"Yes": [1], " Yes": [space, 1], "yes": [2], " yes": [space, 2]}
    ids |= {"No": [3], " No": [space, 3], "no": [4], " no": [space, 4]}
    assert answer_token_ids(_Tokenizer(ids)) == ([1, 2], [3, 4])
    same = dict.fromkeys(ids, [space])
    with pytest.raises(ConfigError, match="no distinct first tokens"):
        answer_token_ids(_Tokenizer(same))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llava")


def test_p_no_on_a_tiny_model_is_a_probability_and_batch_invariant(tiny) -> None:
    images = [Image.new("RGB", (32, 32), (40 * i, 90, 200 - 30 * i)) for i in range(5)]
    objects = ["dog", "cat", "traffic light", "person", "cup"]
    batched = judge_objects(tiny, images, objects, batch_size=3)
    single = [judge_objects(tiny, [image], [obj])[0] for image, obj in zip(images, objects, strict=True)]
    assert all(0.0 <= p <= 1.0 for p in batched)
    assert batched == pytest.approx(single, abs=1e-5)
    assert tiny.generation_hooks == []  # the recording hook is always removed
    with pytest.raises(ConfigError, match="2 images but 1 objects"):
        judge_objects(tiny, images[:2], ["dog"])


def test_p_no_reflects_the_intervention(tiny) -> None:
    from interventions import parse_intervention

    images = [Image.new("RGB", (32, 32), (200, 40 * i, 10)) for i in range(3)]
    plain = judge_objects(tiny, images, ["dog", "cat", "cup"])
    steered = judge_objects(tiny, images, ["dog", "cat", "cup"], intervention=parse_intervention("vhr:alpha=4"))
    assert plain != pytest.approx(steered, abs=1e-6)
    assert tiny.generation_hooks == []


def test_parse_system() -> None:
    baseline = parse_system("baseline")
    assert (baseline.name, baseline.model, baseline.intervention) == ("baseline", None, None)
    vhr = parse_system("vhr:alpha=2")
    assert vhr.intervention.to_dict()["alpha"] == 2.0 and vhr.model is None
    other = parse_system("path/to/model@baseline")
    assert (other.model, other.intervention) == ("path/to/model", None)
    assert parse_system("m@vhr:alpha=3").describe() == {
        "model": "m",
        "intervention": vhr.intervention.__class__(alpha=3.0).to_dict(),
    }
    with pytest.raises(ConfigError, match="empty"):
        parse_system("model@")
    with pytest.raises(ConfigError, match="unknown intervention 'nosuch'"):
        parse_system("nosuch:x=1")


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ConfigError, match="n_samples must be >= 1, got 0"):
        CrossCheckSettings(n_samples=0)
    with pytest.raises(ConfigError, match="weight_temperature must be > 0"):
        CrossCheckSettings(weight_temperature=0.0)
