"""Mechanism checks (benchmarks/mechanisms.py): the statistics on hand-made inputs, the model passes on a tiny LLaVA."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_tiny

from benchmarks import chair
from benchmarks import mechanisms as mech
from halluc.imagesets import resolve_images
from halluc.world import build_split, image_dir, scene_types

torch.set_num_threads(1)
PROMPT = "Describe this image in detail."


# ----- pure computations ---------------------------------------------------------------------------------------
def test_image_attention_mass_is_the_mean_over_layers_and_heads_of_the_image_keys_mass() -> None:
    # 1 sample, 2 heads, 2 queries, 3 keys; keys 0 and 2 are image tokens.
    layer0 = torch.tensor([[[[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    layer1 = torch.tensor([[[[0.0, 1.0, 0.0], [0.3, 0.3, 0.4]], [[0.2, 0.2, 0.6], [0.5, 0.0, 0.5]]]])
    keys = torch.tensor([[True, False, True]])
    mass = mech.image_attention_mass([layer0, layer1], keys)
    # query 0: layer0 heads 0.5, 1.0; layer1 heads 0.0, 0.8 -> mean 0.575; query 1: 0.8, 0.0, 0.7, 1.0 -> 0.625
    assert mass.shape == (1, 2)
    assert mass[0].tolist() == pytest.approx([0.575, 0.625])
    by_layer = mech.image_attention_by_layer([layer0, layer1], keys)  # layer0: 0.75, 0.4; layer1: 0.4, 0.85
    assert by_layer.shape == (2, 1, 2)
    assert by_layer[:, 0].tolist() == [pytest.approx([0.75, 0.4]), pytest.approx([0.4, 0.85])]


def test_category_distribution_sums_synonyms_and_normalises() -> None:
    nouns = {"cup": ("cup", "mug"), "fork": ("fork",)}
    logprobs = {"cup": math.log(0.2), "mug": math.log(0.2), "fork": math.log(0.1)}
    dist = mech.category_distribution(logprobs, nouns)
    assert dist == pytest.approx({"cup": 0.8, "fork": 0.2})
    assert mech.in_scene_share(dist, ["cup"]) == pytest.approx(0.8)
    assert mech.in_scene_share(dist, ["cup", "fork", "bus"]) == pytest.approx(1.0)


def test_stratified_difference_compares_at_the_same_position_only() -> None:
    # Hallucinated mentions sit late (high values) so the raw difference is positive, but within each position
    # stratum they are 1 lower; stratum 2 has no grounded mention and must be ignored.
    values = [1.0, 2.0, 2.0, 5.0, 5.0, 5.0, 6.0, 100.0]
    hallucinated = [True, False, False, True, True, True, False, True]
    strata = [0, 0, 0, 1, 1, 1, 1, 2]
    assert mech.stratified_difference(values, hallucinated, strata) == pytest.approx(-1.0)
    assert mech.stratified_difference(values, hallucinated, [0] * 8) > 0
    assert math.isnan(mech.stratified_difference([1.0, 2.0], [True, True], [0, 1]))


def test_bootstrap_by_image_resamples_images_and_is_reproducible() -> None:
    per_image = [np.array([1.0, 1.2]), np.array([0.8]), np.array([1.1, 0.9, 1.0]), np.array([1.3])]

    def mean_of(idx: np.ndarray) -> float:
        return float(np.concatenate([per_image[i] for i in idx]).mean())

    first = mech.bootstrap_by_image(len(per_image), mean_of, n_resamples=200, seed=3)
    again = mech.bootstrap_by_image(len(per_image), mean_of, n_resamples=200, seed=3)
    assert first == again
    assert first.estimate == pytest.approx(np.mean([1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 1.3]))
    assert 0.8 <= first.low <= first.estimate <= first.high <= 1.3
    single = mech.bootstrap_by_image(1, mean_of)
    assert math.isnan(single.low) and math.isnan(single.high)
    assert mech.Interval(-0.2, -0.3, -0.1).below_zero and not mech.Interval(-0.2, -0.3, 0.1).below_zero


def test_rate_by_sentence_and_later_sentences() -> None:
    caption = "A cup and a fork. A bus is here. A car. A dog. A cat."
    details = [chair.score_caption(caption, {"cup", "bus", "car"}).to_dict()]
    # sentence 1: cup ok, fork hallucinated; 2: bus ok; 3: car ok; 4+: dog, cat hallucinated
    assert mech.rate_by_sentence(details) == {"1": 0.5, "2": 0.0, "3": 0.0, "4+": 1.0}
    assert mech.later_sentences_hallucinate_more({"1": 0.5, "2": 0.0, "3": 0.0, "4+": 1.0})
    assert not mech.later_sentences_hallucinate_more({"1": 0.5, "2": 0.4})


def test_first_mentions_keep_each_category_once_in_caption_order() -> None:
    score = chair.score_caption("A fork and a cup. The cup is red. A knife and another fork.", {"cup", "knife"})
    firsts = mech.first_mentions(score)
    assert [(v.mention.category, v.hallucinated) for v in firsts] == [("fork", True), ("cup", False), ("knife", False)]
    assert firsts[1].mention.start == score.caption.index("cup")


def test_opener_prefixes_cut_the_world_openers_before_the_objects() -> None:
    prefixes = mech.opener_prefixes("kitchen")
    assert "A kitchen scene with" in prefixes
    assert "This kitchen has" in prefixes
    assert "An image of a kitchen showing" in prefixes
    assert "A small kitchen with" in prefixes
    canonical = mech.opener_prefixes("kitchen", all_names=False)
    assert len(canonical) == 6 and len(prefixes) == 18  # six openers x (one | three) scene names
    assert canonical == prefixes[:6] and all("small" not in p and "bright" not in p for p in canonical)
    assert all("{" not in p and not p.endswith(" ") for p in prefixes)


def test_token_spans_cover_the_stripped_text_and_find_noun_tokens() -> None:
    tokenizer = build_tiny("llava").processor.tokenizer
    ids = tokenizer(" A cat is sitting on a wooden table.", add_special_tokens=False)["input_ids"]
    text, spans = mech.token_spans(tokenizer, ids)
    assert text == "A cat is sitting on a wooden table."
    assert len(spans) == len(ids)
    assert "".join(text[s:e] for s, e in spans) == text
    start = text.index("table")
    tokens = mech.tokens_overlapping(spans, start, start + len("table"))
    assert "".join(text[spans[k][0] : spans[k][1]] for k in tokens).strip() == "table"


def test_attention_decay_spearman_is_negative_for_decaying_mass() -> None:
    rng = np.random.default_rng(0)
    traces = [
        mech.TokenTrace([0.0] * 20, [0.0] * 20, [[m] for m in np.linspace(0.8, 0.2, 20) + rng.normal(0, 0.01, 20)])
        for _ in range(6)
    ]
    decay = mech.attention_decay(traces, n_resamples=100, bin_width=10)
    assert decay["spearman"]["estimate"] < -0.9
    assert decay["spearman"]["high"] < 0
    assert list(decay["mean_by_position"]) == ["0-9", "10-19"]
    assert decay["mean_by_position"]["0-9"] > decay["mean_by_position"]["10-19"]


def _record(image: int, hallucinated: bool, position: int, attention: float) -> mech.MentionRecord:
    """A first mention with the given attention over three layers: none at layer 0, twice as much at layer 2."""
    layers = (0.0, attention, 2 * attention)
    return mech.MentionRecord(image, "cup", "cup", hallucinated, position, 0, 1, layers, -1.0, -2.0)


def test_compare_mentions_matches_by_position_bin() -> None:
    records = [
        _record(1, False, 2, 0.6),
        _record(1, True, 20, 0.1),
        _record(2, False, 3, 0.5),
        _record(2, False, 21, 0.3),
        _record(3, True, 4, 0.4),
        _record(3, False, 22, 0.2),
    ]
    result = mech.compare_mentions(records, bin_width=8, n_resamples=100)
    # bin 0: h 0.4 vs g 0.55 -> -0.15; bin 2: h 0.1 vs g 0.25 -> -0.15
    assert result["attention"]["matched"]["estimate"] == pytest.approx(-0.15)
    assert result["attention"]["unmatched"]["estimate"] == pytest.approx(0.25 - 0.4)
    assert result["image_effect"]["matched"]["estimate"] == pytest.approx(0.0)
    assert result["counts"] == {"images": 3, "hallucinated": 2, "grounded": 4}
    layers = [interval["estimate"] for interval in result["attention_by_layer"]]
    assert layers == [pytest.approx(0.0), pytest.approx(-0.15), pytest.approx(-0.30)]


def test_probes_read_presence_from_features() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 4))
    present = [frozenset({"cup"} if row[0] > 0 else set()) | {"bowl"} for row in train]
    probes = mech.fit_probes(train, present, ["bowl", "cup", "fork"])
    test = np.array([[3.0, 0, 0, 0], [-3.0, 0, 0, 0]])
    probabilities = mech.probe_readout(probes, test, ["bowl", "cup", "fork"])
    assert probabilities[:, 0].tolist() == [1.0, 1.0] and probabilities[:, 2].tolist() == [0.0, 0.0]
    assert probabilities[0, 1] > 0.9 and probabilities[1, 1] < 0.1
    summary = mech.probe_summary(probabilities, ["bowl", "cup", "fork"], [frozenset({"bowl"})] * 2, [{"cup"}, {"cup"}])
    assert summary["hallucinated_read_absent_share"] == pytest.approx(0.5)
    assert summary["counts"] == {"hallucinated": 2, "absent": 2, "present": 2}
    assert summary["mean_p"]["present"] == pytest.approx(1.0)
    assert "mean_p_by_scene" not in summary
    scenes = [["cup", "bowl"], ["bowl"]]  # image 0: the hallucinated cup is in-scene; image 1: foreign
    split = mech.probe_summary(probabilities, ["bowl", "cup", "fork"], [frozenset({"bowl"})] * 2, [{"cup"}] * 2, scenes)
    assert split["mean_p_by_scene"]["hallucinated"]["in_scene"] == pytest.approx(probabilities[0, 1])
    assert split["mean_p_by_scene"]["hallucinated"]["foreign"] == pytest.approx(probabilities[1, 1])
    assert split["counts_by_scene"]["absent"] == {"in_scene": 0, "foreign": 2}


def _report(share: float, attention_high: float, probe_share: float | None) -> dict:
    interval = {"estimate": -0.1, "low": -0.2, "high": attention_high}
    return {
        "prior": {"share": share},
        "mentions": {
            "attention": {"matched": interval},
            "image_effect": {"matched": {"estimate": -1.0, "low": -2.0, "high": -0.5}},
            "p_text": {"matched": {"estimate": 0.1, "low": None, "high": None}},
        },
        "probe": {"check_uses": "val", "val": {"hallucinated_read_absent_share": probe_share}},
        "decay": {"spearman": {"estimate": -0.3, "low": -0.4, "high": -0.2}},
        "hallucination_rate_by_sentence": {"1": 0.1, "2": 0.3},
    }


def test_evaluate_checks_applies_the_thresholds() -> None:
    checks = mech.evaluate_checks(_report(0.85, -0.01, 0.7))
    assert checks == {
        "prior: in-scene share >= 0.8": True,
        "attention: hallucinated - grounded CI < 0": True,
        "image effect: hallucinated - grounded CI < 0": True,
        "text-only p: hallucinated - grounded CI > 0": False,  # no interval: fails
        "probe: most hallucinated read absent": True,
        "decay: Spearman(mass, position) CI < 0": True,
        "later sentences hallucinate more": True,
    }
    failing = mech.evaluate_checks(_report(0.25, 0.02, None))
    assert not failing["prior: in-scene share >= 0.8"]
    assert not failing["attention: hallucinated - grounded CI < 0"]
    assert not failing["probe: most hallucinated read absent"]


# ----- model passes on a tiny LLaVA ----------------------------------------------------------------------------
def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _direct(lvlm, image: Image.Image | None, answer: list[int], *, attentions: bool = False):
    """One unpadded sample: prompt + answer in a single forward (the reference the batched pass must match)."""
    batch = lvlm.prepare([image], [PROMPT])
    ids = torch.cat([batch.inputs["input_ids"], torch.tensor([answer])], dim=1)
    extra = {k: v for k, v in batch.inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        out = lvlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=attentions, **extra)
    logp = out.logits[0].log_softmax(-1)
    p = batch.prompt_length
    scores = [float(logp[p - 1 + j, t]) for j, t in enumerate(answer)]
    return scores, out, batch


def test_teacher_force_matches_unbatched_forwards_and_restores_attention() -> None:
    lvlm = build_tiny("llava")
    images = _images(3)
    answers = [[30, 31, 32, 33, 34], [40, 41], [50, 51, 52]]  # different lengths: right padding must not leak
    before = lvlm.attn_implementation
    traces = mech.teacher_force(lvlm, images, answers, prompt=PROMPT, batch_size=3)
    assert lvlm.attn_implementation == before
    lvlm.set_attn_implementation("eager")
    try:
        for image, answer, trace in zip(images, answers, traces, strict=True):
            scores, out, batch = _direct(lvlm, image, answer, attentions=True)
            assert trace.logp_image == pytest.approx(scores, abs=1e-4)
            text_scores, _, _ = _direct(lvlm, None, answer)
            assert trace.logp_text == pytest.approx(text_scores, abs=1e-4)
            keys = torch.zeros(out.attentions[0].shape[-1], dtype=torch.bool)
            keys[batch.image_positions[0]] = True
            mass = mech.image_attention_mass(out.attentions, keys[None])[0]
            p = batch.prompt_length
            assert trace.attention == pytest.approx(mass[p - 1 : p - 1 + len(answer)].tolist(), abs=1e-5)
            by_layer = mech.image_attention_by_layer(out.attentions, keys[None])[:, 0, p - 1 : p - 1 + len(answer)]
            assert np.array(trace.attention_by_layer) == pytest.approx(by_layer.T.numpy(), abs=1e-5)
            assert all(0.0 <= m <= 1.0 for m in trace.attention)
    finally:
        lvlm.set_attn_implementation(before)


def test_describe_images_keeps_the_generated_ids_and_the_texts_generate_returns() -> None:
    lvlm = build_tiny("llava")
    images = _images(2)
    descriptions = mech.describe_images(lvlm, images, [7, 8], prompt=PROMPT, max_new_tokens=12, batch_size=2)
    texts = lvlm.generate(images, [PROMPT] * 2, max_new_tokens=12)
    assert [d.text for d in descriptions] == texts
    assert [d.image_id for d in descriptions] == [7, 8]
    for description in descriptions:
        assert len(description.spans) == len(description.ids) <= 12
        # greedy: every generated token is the argmax of the teacher-forced image pass
        _, out, batch = _direct(lvlm, images[descriptions.index(description)], description.ids)
        p = batch.prompt_length
        assert out.logits[0, p - 1 : p - 1 + len(description.ids)].argmax(-1).tolist() == description.ids


def test_text_prior_scores_noun_phrases_after_the_text_only_chat_prompt() -> None:
    lvlm = build_tiny("llava")
    tokenizer = lvlm.processor.tokenizer
    prefix = " A kitchen scene with"
    got = mech._prefix_logprobs(lvlm, PROMPT, prefix, [" a cup", " an automobile"])
    for continuation, score in zip([" a cup", " an automobile"], got, strict=True):
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        full = tokenizer(prefix + continuation, add_special_tokens=False)["input_ids"]
        scores, _, _ = _direct(lvlm, None, full)
        assert score == pytest.approx(sum(scores[len(head) :]), abs=1e-4)
    report = mech.text_prior(lvlm, prompt=PROMPT, all_names=False)
    assert set(report.by_scene) == set(scene_types())
    assert len(report.by_prefix) == 4 * len(mech.opener_prefixes("kitchen", all_names=False))
    for scene, distribution in report.distributions.items():
        assert sum(distribution.values()) == pytest.approx(1.0)
        assert report.by_scene[scene] == pytest.approx(mech.in_scene_share(distribution, scene_types()[scene]))
    assert report.share == pytest.approx(np.mean(list(report.by_scene.values())))


def test_image_features_are_the_projected_image_tokens_mean_pooled() -> None:
    lvlm = build_tiny("llava")
    images = _images(2)
    features = mech.image_features(lvlm, images, prompt=PROMPT)
    batch = lvlm.prepare(images, [PROMPT] * 2)
    with torch.no_grad():
        projected = lvlm.model.get_image_features(
            pixel_values=batch.inputs["pixel_values"],
            vision_feature_layer=lvlm.model.config.vision_feature_layer,
            vision_feature_select_strategy=lvlm.model.config.vision_feature_select_strategy,
        ).pooler_output
    expected = np.stack([p.mean(dim=0).numpy() for p in projected])
    assert features.shape == (2, lvlm.hidden_size)
    np.testing.assert_allclose(features, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four val and four shift images of the world, built into a temporary folder."""
    root = tmp_path_factory.mktemp("world")
    for split in ("val", "shift"):
        build_split(split, 4, root, seed=0)
    return root


def test_measure_mechanisms_runs_end_to_end_on_a_tiny_model(tiny_world: Path) -> None:
    lvlm = build_tiny("llava")

    def images(split: str):
        folder = image_dir(tiny_world, split)
        return resolve_images(
            str(folder),
            instances=tiny_world / f"instances_{split}.json",
            captions=tiny_world / f"captions_{split}.json",
        )

    run = mech.measure_mechanisms(
        lvlm,
        images("shift"),
        {"val": images("val"), "shift": images("shift")},
        n_images=3,
        n_probe=4,
        prompt=PROMPT,
        max_new_tokens=10,
        n_resamples=50,
    )
    report = run.report
    assert report["settings"]["shift_images"] == 3 and report["settings"]["probe_images"] == 4
    assert 0.0 <= report["prior"]["share"] <= 1.0
    assert len(run.descriptions) == 3
    assert set(report["checks"]) == set(mech.evaluate_checks(report))
    assert report["probe"]["check_uses"] == "val" and set(report["probe"]) == {"check_uses", "val", "shift"}
    gt = chair.load_ground_truth(instances=tiny_world / "instances_shift.json")
    shown = {d["image_id"] for d in run.descriptions}
    assert report["probe"]["val"]["counts"]["present"] == sum(len(gt[i]) for i in shown)
    by_scene = report["probe"]["val"]["counts_by_scene"]
    assert sum(sum(parts.values()) for parts in by_scene.values()) == 3 * 27
