"""raymmr.eval.metrics on hand-made predictions and similarity matrices."""

import math

import numpy as np
import pytest
import torch

from raymmr.eval.metrics import (
    ImageBootstrap,
    accuracy_by_group,
    answer_type_name,
    chance_mean_rank,
    degradation,
    degradation_table,
    effect_shown,
    format_interval,
    majority_answer,
    majority_baseline,
    markdown_table,
    question_only_baseline,
    retrieval_metrics,
    retrieval_ranks,
    type_prior_baseline,
    vqa_accuracy,
)

# --------------------------------------------------------------------------- VQA accuracy


def test_vqa_accuracy_exact_numbers_after_normalisation():
    preds = ["Yes", "two", "the liver", "no", "3"]
    golds = ["yes", "2", "Liver.", "yes", "4"]
    types = ["CLOSED", "OPEN", "open", "CLOSED ", 0]  # VQA-RAD spellings and the loader's int
    acc = vqa_accuracy(preds, golds, types)
    assert acc["overall"] == pytest.approx(3 / 5)
    assert acc["open"] == pytest.approx(2 / 3)  # "two"=="2", "the liver"=="liver.", "3"!="4"
    assert acc["closed"] == pytest.approx(1 / 2)
    assert (acc["n"], acc["n_open"], acc["n_closed"]) == (5, 3, 2)
    assert (acc["correct"], acc["correct_open"], acc["correct_closed"]) == (3, 2, 1)


def test_vqa_accuracy_unknown_types_count_overall_only_and_empty_types_are_nan():
    acc = vqa_accuracy(["yes", "no"], ["yes", "yes"], [1, -1])
    assert acc["overall"] == 0.5 and acc["closed"] == 1.0 and acc["n_closed"] == 1
    assert math.isnan(acc["open"]) and acc["n_open"] == 0
    untyped = vqa_accuracy(["a"], ["a"])
    assert untyped["overall"] == 1.0 and math.isnan(untyped["open"]) and math.isnan(untyped["closed"])
    assert math.isnan(vqa_accuracy([], [])["overall"])


def test_vqa_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        vqa_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="answer types"):
        vqa_accuracy(["a"], ["a"], ["open", "closed"])


def test_answer_type_names():
    assert [answer_type_name(t) for t in ["OPEN", "CLOSED ", 0, 1, -1, None, torch.tensor(1)]] == [
        "open",
        "closed",
        "open",
        "closed",
        "unknown",
        "unknown",
        "closed",
    ]


def test_accuracy_by_group():
    out = accuracy_by_group(
        ["yes", "no", "liver", "yes"], ["yes", "yes", "liver", "yes"], ["d1", "d0", "d1", "d0"], [1, 1, 0, 1]
    )
    assert list(out) == ["d0", "d1"]
    assert out["d0"]["overall"] == 0.5 and out["d0"]["closed"] == 0.5 and out["d0"]["n"] == 2
    assert out["d1"]["overall"] == 1.0 and out["d1"]["open"] == 1.0 and out["d1"]["closed"] == 1.0


# --------------------------------------------------------------------------- baselines


def test_majority_baseline():
    train = ["yes", "Yes", "no", "2", "two", "Two"]  # normalised: yes x2, no x1, 2 x3
    out = majority_baseline(train, ["2", "yes", "3"], ["open", "closed", "open"])
    assert out["prediction"] == "2" and out["predictions"] == ["2", "2", "2"]
    assert out["overall"] == pytest.approx(1 / 3) and out["open"] == 0.5 and out["closed"] == 0.0
    assert majority_answer(["yes", "no"]) == "no"  # ties: alphabetically first, deterministic


def test_question_only_baseline_uses_per_question_majority_then_global_fallback():
    train = [
        ("Is there a lesion?", "yes"),
        ("is there a lesion", "yes"),
        ("Is there a lesion", "no"),
        ("What organ is this?", "liver"),
        ("what organ is this", "Liver"),
        ("How many lesions?", "2"),
        ("How many lesions?", "two"),
    ]  # global counts: yes 2, liver 2, 2 2, no 1 -> tie broken to "2"
    test = [
        ("IS THERE A LESION?", "yes"),  # seen -> "yes": right
        ("What organ is this?", "kidney"),  # seen -> "liver": wrong
        ("Is the heart enlarged?", "two"),  # unseen -> global "2": right
    ]
    out = question_only_baseline(train, test)
    assert out["predictions"] == ["yes", "liver", "2"]
    assert out["overall"] == pytest.approx(2 / 3)
    assert out["coverage"] == pytest.approx(2 / 3)
    assert out["n"] == 3


def test_type_prior_baseline_group_then_answer_type_then_global_majority():
    train = [
        {"question_type": "presence", "answer_type": "closed", "answer": "no"},
        {"question_type": "presence", "answer_type": "closed", "answer": "No"},
        {"question_type": "presence", "answer_type": "closed", "answer": "yes"},
        {"question_type": "organ", "answer_type": "closed", "answer": "yes"},
        {"question_type": "organ", "answer_type": "open", "answer": "liver"},
        {"question_type": "organ", "answer_type": "OPEN", "answer": "lung"},
        {"question_type": "organ", "answer_type": "open", "answer": "lung"},
        {"question_type": "size", "answer_type": 0, "answer": "2 cm"},  # the loader's int answer type
    ]  # closed: no 2, yes 2 -> "no" (alphabetical tie-break); open: lung 2, liver 1, 2 cm 1 -> "lung"; global "lung"
    test = [
        {"question_type": "presence", "answer_type": "closed", "answer": "no"},  # group -> "no": right
        {"question_type": "presence", "answer_type": "closed", "answer": "yes"},  # group -> "no": wrong
        {"question_type": "Organ ", "answer_type": "open", "answer": "lung"},  # group (spelling normalised) -> right
        {"question_type": "size", "answer_type": "open", "answer": "2 cm"},  # group -> "2 cm": right
        {"question_type": "side", "answer_type": "closed", "answer": "no"},  # unseen type -> closed majority: right
        {"question_type": "side", "answer_type": "", "answer": "lung"},  # unknown answer type -> global: right
        {"question_type": "", "answer_type": "open", "answer": "liver"},  # no type -> open majority "lung": wrong
    ]
    out = type_prior_baseline(train, test, [r["answer_type"] for r in test])
    assert out["predictions"] == ["no", "no", "lung", "2 cm", "no", "lung", "lung"]
    assert out["overall"] == pytest.approx(5 / 7)
    assert out["closed"] == pytest.approx(2 / 3) and out["open"] == pytest.approx(2 / 3)
    assert out["coverage"] == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="no train records"):
        type_prior_baseline([], test)


def test_type_prior_baseline_reads_samples_too():
    from types import SimpleNamespace

    train = [SimpleNamespace(question_type="organ", answer_type="open", answer="heart")] * 2
    test = [SimpleNamespace(question_type="organ", answer_type="open", answer="heart")]
    assert type_prior_baseline(train, test)["overall"] == 1.0


# --------------------------------------------------------------------------- intervals


def _clustered(outcomes_per_image, questions_per_image):
    """(image ids, hits): every question of image i has outcome outcomes_per_image[i]."""
    ids = [i for i in range(len(outcomes_per_image)) for _ in range(questions_per_image)]
    hits = [o for o in outcomes_per_image for _ in range(questions_per_image)]
    return ids, np.array(hits, dtype=float)


def test_bootstrap_degenerate_cases_are_exact():
    ids, hits = _clustered([1, 0, 1, 1, 0], 3)
    boot = ImageBootstrap(ids, n_boot=200)
    assert boot.n_images == 5 and boot.weights.shape == (200, 5)
    assert (boot.weights.sum(axis=1) == 5).all()  # each resample draws as many images as there are
    assert boot.interval(np.ones(15)) == (1.0, 1.0)
    assert boot.interval(np.zeros(15)) == (0.0, 0.0)
    assert boot.interval(hits - hits) == (0.0, 0.0)  # a paired difference of identical predictors
    assert boot.interval(hits, hits == 1) == (1.0, 1.0)  # a subset by mask: its own questions only
    assert all(math.isnan(x) for x in boot.interval(hits, np.zeros(15, bool)))  # empty subset
    with pytest.raises(ValueError, match="15 questions"):
        boot.interval(np.ones(14))


def test_bootstrap_is_deterministic_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 60, 200).tolist()
    hits = (rng.random(200) < 0.6).astype(float)
    lo, hi = ImageBootstrap(ids, seed=3).interval(hits)
    assert (lo, hi) == ImageBootstrap(ids, seed=3).interval(hits)
    assert lo < hits.mean() < hi and 0.05 < hi - lo < 0.3


def test_bootstrap_resamples_images_not_questions():
    """10 images x 10 questions that share one outcome carry the information of 10 questions, not
    100: the interval is as wide as for 10 independent questions and wider than for 100."""
    outcomes = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0]  # mean 0.6
    ids, hits = _clustered(outcomes, 10)
    clustered = ImageBootstrap(ids).interval(hits)
    ids100, hits100 = _clustered(outcomes * 10, 1)  # 100 independent images, same mean
    independent = ImageBootstrap(ids100).interval(hits100)
    ids10, hits10 = _clustered(outcomes, 1)
    ten = ImageBootstrap(ids10).interval(hits10)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(clustered) > 2 * width(independent)
    assert width(clustered) == pytest.approx(width(ten), abs=0.05)


def test_bootstrap_width_shrinks_like_one_over_root_n():
    outcomes = [1, 0, 1, 1, 0] * 20  # 100 images, mean 0.6
    widths = {}
    for n in (100, 400, 1600):
        ids, hits = _clustered(outcomes * (n // 100), 1)
        lo, hi = ImageBootstrap(ids, n_boot=2000).interval(hits)
        widths[n] = hi - lo
    assert widths[100] / widths[400] == pytest.approx(2, rel=0.25)
    assert widths[400] / widths[1600] == pytest.approx(2, rel=0.25)


def test_bootstrap_paired_difference_keeps_the_pairing():
    """b misses exactly one more question than a on every image (4 questions each): every resample
    shows a difference of exactly 1/4, although each accuracy alone varies a lot between images."""
    rng = np.random.default_rng(0)
    ids = [i for i in range(50) for _ in range(4)]
    a = np.ones(200)
    for i in range(50):
        a[4 * i + 1 : 4 * i + 1 + rng.integers(0, 4)] = 0  # image accuracy 1, 3/4, 1/2 or 1/4
    b = a.copy()
    b[0::4] = 0  # the first question of every image, which a always gets right
    boot = ImageBootstrap(ids)
    lo, hi = boot.interval(a - b)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    assert boot.interval(a)[1] - boot.interval(a)[0] > 0.1


def test_format_interval_and_effect_shown():
    assert format_interval(0.531, (0.51, 0.552)) == "53.1% [51.0, 55.2]"
    assert format_interval(0.042, (0.01, 0.073), signed=True) == "+4.2 points [1.0, 7.3]"
    assert format_interval(float("nan"), (0.1, 0.2)) == "n/a"
    assert format_interval(0.5, None) == "50.0%"
    assert effect_shown((0.01, 0.07)) and effect_shown((-0.07, -0.01))
    assert not effect_shown((-0.01, 0.07)) and not effect_shown((0.0, 0.07)) and not effect_shown(None)


# --------------------------------------------------------------------------- retrieval


def test_retrieval_hand_made_3x3_with_pessimistic_ties():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # text 0 first -> rank 1
            [0.8, 0.5, 0.3],  # text 0 beats text 1 -> rank 2
            [0.3, 0.3, 0.3],  # all tied -> pessimistic rank 3
        ]
    )
    i2t, t2i = retrieval_ranks(sim)
    assert i2t.tolist() == [1, 2, 3]
    assert t2i.tolist() == [1, 1, 2]  # column 2: 0.3 ties with image 2's own 0.3 -> rank 2
    m = retrieval_metrics(sim)
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r5"] == 1.0 and m["i2t_r10"] == 1.0
    assert m["t2i_r1"] == pytest.approx(2 / 3) and m["t2i_r5"] == 1.0
    assert m["i2t_mean_rank"] == pytest.approx(2.0)
    assert m["t2i_mean_rank"] == pytest.approx(4 / 3)
    assert m["mean_rank"] == pytest.approx(5 / 3)
    assert m["i2t_median_rank"] == 2.0 and m["n"] == 3


def test_retrieval_recall_at_k_on_planted_ranks():
    n = 12
    planted = [1, 2, 5, 6, 10, 11, 1, 3, 12, 1, 4, 7]
    sim = torch.zeros(n, n)
    for i, r in enumerate(planted):
        others = [j for j in range(n) if j != i]
        sim[i, others[: r - 1]] = 2.0  # exactly r-1 texts above the true one
        sim[i, i] = 1.0
    m = retrieval_metrics(sim)
    assert retrieval_ranks(sim)[0].tolist() == planted
    assert m["i2t_r1"] == pytest.approx(3 / 12)
    assert m["i2t_r5"] == pytest.approx(7 / 12)  # 1, 2, 5, 1, 3, 1, 4
    assert m["i2t_r10"] == pytest.approx(10 / 12)  # all but 11 and 12
    assert m["i2t_mean_rank"] == pytest.approx(sum(planted) / n)
    # text->image is image->text of the transpose
    mt = retrieval_metrics(sim.T)
    assert mt["t2i_mean_rank"] == pytest.approx(m["i2t_mean_rank"])
    assert mt["t2i_r5"] == pytest.approx(m["i2t_r5"])


def test_retrieval_identity_and_constant_matrices():
    ident = retrieval_metrics(torch.eye(5))
    assert ident["i2t_r1"] == ident["t2i_r1"] == 1.0 and ident["mean_rank"] == 1.0
    const = retrieval_metrics(torch.ones(4, 4))
    assert const["i2t_r1"] == 0.0 and const["i2t_mean_rank"] == 4.0 and const["t2i_mean_rank"] == 4.0


def test_retrieval_identical_caption_counts_as_a_hit():
    """Texts 0 and 1 are one caption: image 0 retrieving text 1 is a hit, text 1 retrieving image 0 too."""
    sim = torch.tensor(
        [
            [0.2, 0.9, 0.5],  # its group's best is text 1 (0.9); only text 2 competes -> 1 (pairs only: 3)
            [0.1, 0.3, 0.4],  # group best 0.3 < text 2's 0.4 -> 2
            [0.6, 0.7, 0.5],  # a singleton: both others above -> 3
        ]
    )
    groups = ["a chest ct", "a chest ct", "a head mr"]
    i2t, t2i = retrieval_ranks(sim, groups)
    assert i2t.tolist() == [1, 2, 3]
    assert t2i.tolist() == [2, 1, 2]  # text 2: image 0 ties its 0.5 -> pessimistic 2
    assert retrieval_ranks(sim)[0].tolist() == [3, 2, 3] and retrieval_ranks(sim)[1].tolist() == [2, 3, 2]
    m = retrieval_metrics(sim, text_groups=groups)
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["mean_rank"] == pytest.approx((6 / 3 + 5 / 3) / 2)
    with pytest.raises(ValueError, match="2 text groups for 3"):
        retrieval_ranks(sim, groups[:2])


def test_retrieval_singleton_groups_give_the_pair_ranks_exactly():
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 40):
        sim = torch.randint(0, 4, (n, n), generator=g).float()  # many ties
        plain, grouped = retrieval_ranks(sim), retrieval_ranks(sim, [f"caption {i}" for i in range(n)])
        assert torch.equal(plain[0], grouped[0]) and torch.equal(plain[1], grouped[1])


def test_chance_mean_rank_matches_random_similarities():
    """Random scores, identical captions scoring identically (a text encoder cannot do otherwise)."""
    groups = ["a", "a", "b", "c", "c", "c"]
    assert chance_mean_rank(["x", "y", "z", "w"]) == pytest.approx(2.5)  # (N + 1) / 2
    block = torch.tensor([0, 0, 1, 2, 2, 2])
    g = torch.Generator().manual_seed(0)
    ranks = [retrieval_metrics(torch.rand(6, 3, generator=g)[:, block], text_groups=groups)["mean_rank"]
             for _ in range(1000)]
    assert sum(ranks) / len(ranks) == pytest.approx(chance_mean_rank(groups), rel=0.04)


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


# --------------------------------------------------------------------------- degradation


def test_degradation_is_positive_when_worse_for_accuracy_and_rank():
    clean = {"overall": 0.8, "i2t_r1": 0.5, "mean_rank": 2.0, "n": 10, "correct": 8}
    pert = {"overall": 0.6, "i2t_r1": 0.5, "mean_rank": 3.0, "n": 10, "correct": 6}
    d = degradation(clean, pert)
    assert d["overall_drop"] == pytest.approx(0.2) and d["overall_rel_drop"] == pytest.approx(0.25)
    assert d["mean_rank_drop"] == pytest.approx(1.0) and d["mean_rank_rel_drop"] == pytest.approx(0.5)
    assert d["i2t_r1_drop"] == 0.0
    assert not any(k.startswith(("n_", "correct")) for k in d)
    table = degradation_table({"none": clean, "strong": pert})
    assert list(table) == ["strong"] and table["strong"]["overall_drop"] == pytest.approx(0.2)
    with pytest.raises(KeyError, match="clean entry"):
        degradation_table({"strong": pert})


# --------------------------------------------------------------------------- Markdown


def test_markdown_table_nested_flat_and_list():
    nested = markdown_table(
        {"clean": {"overall": 0.75, "n": 4}, "strong": {"overall": float("nan"), "n": 0}},
        index_name="severity",
        percent=["overall"],
    )
    assert nested.splitlines() == [
        "| severity | overall | n |",
        "|---|---|---|",
        "| clean | 75.0% | 4 |",
        "| strong | n/a | 0 |",
    ]
    flat = markdown_table({"overall": 0.5, "note": "a|b"})
    assert flat.splitlines()[2:] == ["| overall | 0.5000 |", "| note | a\\|b |"]
    rows = markdown_table([{"a": 1, "b": 0.123456}, {"a": 2}], floatfmt=".2f")
    assert rows.splitlines()[2:] == ["| 1 | 0.12 |", "| 2 |  |"]


def test_validation_counts_vqa_as_evaluation_does():
    """One definition: an answer outside the vocabulary (label -100) is asked and wrong, captions
    are not asked; the same predictions give the same accuracy through vqa_accuracy's strings."""
    from raymmr.eval.metrics import vqa_hits

    vocab = ["yes", "no", "liver"]
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    labels = torch.tensor([0, 0, -100, -100])  # right, wrong, out of vocabulary, caption
    is_vqa = torch.tensor([True, True, True, False])
    correct, asked = vqa_hits(logits, labels, is_vqa)
    assert (int(correct), int(asked)) == (1, 3)
    preds = [vocab[i] for i in logits.argmax(-1)[:3].tolist()]
    assert vqa_accuracy(preds, ["yes", "yes", "kidney"])["overall"] == pytest.approx(int(correct) / int(asked))


def test_accuracy_by_question_type_beside_the_question_only_baseline():
    from types import SimpleNamespace

    from raymmr.eval.evaluate import by_question_type
    from raymmr.eval.metrics import ImageBootstrap

    def q(question, answer, qtype, atype):
        return SimpleNamespace(question=question, answer=answer, question_type=qtype, answer_type=atype)

    train = [("Is there a lesion?", "no"), ("Is there a lesion?", "no"), ("Is there a lesion?", "yes"),
             ("Which organ?", "head")]  # fmt: skip
    test = [q("Is there a lesion?", "yes", "presence", "closed"), q("Is there a lesion?", "no", "presence", "closed"),
            q("Which organ?", "chest", "organ", "open"), q("Which organ?", "head", "organ", "open"),
            q("A caption has no question type", "", "", "")]  # fmt: skip
    preds = ["yes", "yes", "chest", "chest", "x"]
    blind = question_only_baseline(train, [(s.question, s.answer) for s in test])["predictions"]
    got = by_question_type(test, preds, {"question_only": blind})
    assert set(got) == {"presence/closed", "organ/open"}  # untyped samples are left out
    assert got["presence/closed"] == {"n": 2, "accuracy": 0.5, "question_only": 0.5}  # the blind model says "no"
    assert got["organ/open"] == {"n": 2, "accuracy": 0.5, "question_only": 0.5}  # ... and "head"
    boot = ImageBootstrap(["img0", "img0", "img1", "img2", "img3"])
    with_ci = by_question_type(test, preds, {"question_only": blind}, boot)
    assert with_ci["presence/closed"]["accuracy_ci"] == [0.5, 0.5]  # one image: its two questions go together


def test_seeded_interval_resamples_seeds_as_well_as_images():
    """Arms compared over several seeds: the interval must hold the run-to-run spread. One seed, or
    seeds that agree, give the image interval; seeds that disagree widen it around the same mean."""
    ids = np.repeat(np.arange(100), 3)
    boot = ImageBootstrap(ids, n_boot=500)
    hits = (np.random.default_rng(0).random(300) < 0.6).astype(float)
    mean, ci = boot.seeded_interval([hits])
    assert mean == pytest.approx(hits.mean()) and ci == pytest.approx(boot.interval(hits))
    assert boot.seeded_interval([hits, hits, hits])[1] == pytest.approx(boot.interval(hits))
    mean, (lo, hi) = boot.seeded_interval([hits - 0.2, hits, hits + 0.2])
    base_lo, base_hi = boot.interval(hits)
    assert mean == pytest.approx(hits.mean()) and lo < base_lo - 0.05 and hi > base_hi + 0.05
    closed = np.arange(300) % 3 == 0
    assert boot.seeded_interval([hits], closed)[1] == pytest.approx(boot.interval(hits, closed))
    with pytest.raises(ValueError, match="expected"):
        boot.seeded_interval([hits[:10]])


def test_in_run_validation_gives_cross_domain_accuracy_as_evaluation_defines_it():
    """``val_vqa_accuracy_cross_domain``: the VQA accuracy of the questions from domains outside the
    train split's (``shards.training_domains``, evaluation's ``vqa_cross_domain``), hand-counted;
    absent (never 0) when validation saw no such question."""
    from types import SimpleNamespace

    from raymmr.train.setup import cross_domain_ids
    from raymmr.train.worker import validate

    manifest = {"domains": ["site0", "site1", "site2", "site4"],
                "splits": {"train": {"domains": ["site0", "site1", "site2"]}, "val": {"domains": ["site0", "site4"]}}}
    assert cross_domain_ids(manifest) == (3,)
    assert cross_domain_ids({"domains": ["a"], "splits": {"train": {}}}) == ()  # no domains recorded: none

    class Model(torch.nn.Module):
        def answer_logits(self, image, text_ids, text_mask):
            return torch.nn.functional.one_hot(text_ids[:, 0], 3).float()  # answers what the first token says

        def encode_image(self, image):
            return torch.ones(len(image), 2)

        encode_text = lambda self, ids, mask: torch.ones(len(ids), 2)  # noqa: E731

    def batch(domains, answers, predicted):
        n = len(domains)
        return {"image": torch.zeros(n, 3, 4, 4, dtype=torch.uint8), "text_ids": torch.tensor(predicted)[:, None],
                "text_mask": torch.ones(n, 1, dtype=torch.long), "answer": torch.tensor(answers),
                "domain": torch.tensor(domains), "is_caption": torch.zeros(n, dtype=torch.bool)}

    # Six questions: 4 of 6 right overall; the three of domain 3 (site4): 1 of 3 right.
    batches = [batch([0, 3, 1], [0, 1, 2], [0, 1, 2]), batch([3, 3, 0], [0, 1, 2], [1, 2, 2])]

    def context(batches, ids):
        return SimpleNamespace(engine=SimpleNamespace(module=Model()), device=torch.device("cpu"), bf16=False,
                               world_size=1, cross_domain_ids=ids, task=lambda model, b: {},
                               val_batches=lambda: iter(batches))

    out = validate(context(batches, (3,)))
    assert out["val_vqa_accuracy"] == pytest.approx(4 / 6)
    assert out["val_vqa_accuracy_cross_domain"] == pytest.approx(1 / 3)
    assert "val_vqa_accuracy_cross_domain" not in validate(context(batches, ()))
    assert "val_vqa_accuracy_cross_domain" not in validate(context([batches[0]], (2,)))
