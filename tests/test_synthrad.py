"""SynthRad: determinism, every question kind, balanced answers, site styles, held-out site."""

import io
from collections import Counter

import numpy as np
import pytest

from raymmr.data.making import synthrad
from raymmr.eval.metrics import majority_baseline, question_only_baseline

KW = dict(image_size=32, num_domains=4, test_domain=3, seed=0)


def _samples(split, n, **kw):
    return list(synthrad.generate_split(split, n, **{**KW, **kw}))


def _png(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_deterministic_given_seed_and_independent_of_order():
    a = _samples("train", 12)
    b = _samples("train", 12)
    assert [s.record() for s in a] == [s.record() for s in b]
    assert [_png(s.image) for s in a] == [_png(s.image) for s in b]
    # image 7 alone equals image 7 of the full run: chunked / parallel generation is safe
    alone = synthrad.generate_image_samples("train", 7, **KW)
    assert [s.record() for s in alone] == [s.record() for s in a if s.key.startswith("synthrad-train-0000007")]
    other_seed = _samples("train", 12, seed=1)
    assert [s.record() for s in other_seed] != [s.record() for s in a]


def test_each_image_gives_one_caption_and_three_or_four_questions_with_distinct_keys():
    samples = _samples("val", 40)
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys))
    per_image = Counter(s.extra["image_id"] for s in samples)
    kinds = Counter((s.extra["image_id"], s.kind) for s in samples)
    for image_id, n in per_image.items():
        assert kinds[(image_id, "caption")] == 1
        assert kinds[(image_id, "vqa")] in (3, 4)
        assert n == 1 + kinds[(image_id, "vqa")]
    for s in samples:
        assert "." not in s.key and s.image.size == (32, 32)
        assert (s.caption if s.kind == "caption" else s.question).strip()


def test_all_question_kinds_with_valid_answers_and_balanced_closed_questions():
    vqa = [s for s in _samples("train", 300) if s.kind == "vqa"]
    seen = {(s.question_type, s.answer_type) for s in vqa}
    expected = {("presence", "closed")} | {(q, t) for q in synthrad.QUESTION_TYPES[1:] for t in ("open", "closed")}
    assert seen == expected
    allowed = {
        "organ": {"head", "chest", "abdomen"},
        "modality": {"ct", "mri", "x ray"},
        "side": {"left", "right"},
        "count": {"1", "2", "3"},
        "size": {"small", "large"},
    }
    for s in vqa:
        if s.answer_type == "closed":
            assert s.answer in ("yes", "no")
        else:
            assert s.answer in allowed[s.question_type], (s.question, s.answer)
        if s.question_type in ("side", "count", "size"):
            assert s.extra["lesion"], "lesion questions are only asked when there is a lesion"
    for qtype in synthrad.QUESTION_TYPES:
        answers = [s.answer for s in vqa if s.question_type == qtype and s.answer_type == "closed"]
        assert 0.3 < answers.count("yes") / len(answers) < 0.7, qtype


def test_answers_follow_the_findings():
    for s in _samples("test", 60):
        f = s.extra
        if s.kind != "vqa" or s.answer_type != "open":
            continue
        truth = {
            "organ": s.organ,
            "modality": s.modality.replace("-", " "),
            "side": f["side"],
            "count": str(f["count"]),
            "size": f["size"],
        }[s.question_type]
        assert s.answer == truth


def test_test_domain_is_held_out_of_train_and_val_but_in_test():
    for split in ("train", "val"):
        assert {s.domain for s in _samples(split, 30)} == {"site0", "site1", "site2"}
    assert {s.domain for s in _samples("test", 30)} == {"site0", "site1", "site2", "site3"}
    assert {s.domain for s in _samples("train", 30, test_domain=0)} == {"site1", "site2", "site3"}
    with pytest.raises(ValueError, match="test_domain"):
        _samples("train", 2, test_domain=4)


def test_validation_domain_is_seen_only_in_val_and_is_never_the_test_domain():
    """DomainBed: choices are made on a held-out domain that is not the test domain."""
    kw = dict(num_domains=5, val_domain=4)
    for split in ("train", "pretrain"):
        assert {s.domain for s in _samples(split, 30, **kw)} == {"site0", "site1", "site2"}
    assert {s.domain for s in _samples("val", 40, **kw)} == {"site0", "site1", "site2", "site4"}
    assert {s.domain for s in _samples("test", 40, **kw)} == {"site0", "site1", "site2", "site3"}
    # Train and test are the sets they were without a validation domain (only val changes).
    assert [s.key for s in _samples("test", 8, **kw)] == [s.key for s in _samples("test", 8)]
    assert [s.question for s in _samples("train", 8, **kw)] == [s.question for s in _samples("train", 8)]
    with pytest.raises(ValueError, match="is the test domain"):
        _samples("val", 2, num_domains=5, val_domain=3)
    with pytest.raises(ValueError, match="synthrad_val_domain"):
        _samples("val", 2, num_domains=5, val_domain=5)


def test_sites_differ_in_image_statistics_and_reporting_style():
    styles = synthrad.domain_styles(6)
    assert len({s.name for s in styles}) == 6
    # the same clean images through each site's acquisition chain
    stats = []
    for style in styles[:4]:
        means, stds, sharp = [], [], []
        for i in range(24):
            rng = np.random.default_rng(i)
            f = synthrad.sample_findings(rng)
            img = synthrad.apply_image_style(synthrad.render_image(f, 64, rng), style.image, rng).astype(np.float32)
            means.append(img.mean())
            stds.append(img.std())
            sharp.append(np.abs(np.diff(img, axis=1)).mean())  # noise raises it, blur/low resolution lower it
        stats.append(np.array([np.mean(means), np.mean(stds), np.mean(sharp)]))
    for a in range(4):
        for b in range(a + 1, 4):
            rel = np.abs(stats[a] - stats[b]) / (np.abs(stats[a]) + 1e-6)
            assert rel.max() > 0.1, f"site{a} and site{b} render alike: {stats[a]} vs {stats[b]}"
    f = synthrad.Findings("chest", "x-ray", True, side="left", size="large", count=2, appearance="solid")
    captions = {synthrad.caption_for(f, s.text) for s in styles[:4]}
    assert len(captions) == 4
    questions = {s.text.questions[("side", "open")][0] for s in styles[:4]}
    assert len(questions) == 4


def test_multimodal_signal_beyond_question_only():
    """Question-only accuracy stays far from perfect, so answers truly need the image."""
    train, test = (
        [(s.question, s.answer) for s in _samples(split, n) if s.kind == "vqa"]
        for split, n in (("train", 300), ("test", 120))
    )
    majority = majority_baseline([a for _, a in train], [a for _, a in test])["overall"]
    question_only = question_only_baseline(train, test)["overall"]
    assert majority < 0.4
    assert question_only < 0.6
    assert question_only > majority


def test_pretraining_corpus_shares_no_image_with_the_downstream_vqa_set():
    """CMDPI pre-trains on captions + auto-generated VQA and keeps the downstream VQA data for
    fine-tuning: SynthRad's pretrain split has images of its own, away from the held-out site."""
    from raymmr.data.shards import training_split

    pre = _samples("pretrain", 60)
    downstream = _samples("train", 60) + _samples("val", 20) + _samples("test", 20)
    pixels = {_png(s.image) for s in downstream}
    assert not {_png(s.image) for s in pre} & pixels
    assert not {s.extra["image_id"] for s in pre} & {s.extra["image_id"] for s in downstream}
    assert {s.kind for s in pre} == {"caption", "vqa"}
    # Captions and questions in equal numbers (one of each per image), every question type drawn.
    kinds = Counter((s.extra["image_id"], s.kind) for s in pre)
    assert set(kinds.values()) == {synthrad.PRETRAIN_QUESTIONS} and len(kinds) == 2 * 60
    assert {s.question_type for s in pre if s.kind == "vqa"} == set(synthrad.QUESTION_TYPES)
    assert synthrad.domain_name(KW["test_domain"]) not in {s.domain for s in pre}
    manifest = {"splits": {"train": {}, "pretrain": {}}}
    assert training_split("pretrain", manifest) == "pretrain" and training_split("finetune", manifest) == "train"
    assert training_split("pretrain", {"splits": {"train": {}}}) == "train"  # a set without a corpus
