"""evaluate()'s results: every headline number with an image-bootstrap interval, the text-only
baselines on the same questions, the margin over the strongest of them, the split's role, the
robustness benchmark's keys, and results.md saying all of it."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_shards import hand_samples

from raymmr.eval import evaluate as E
from raymmr.eval.metrics import ImageBootstrap

S = 32


# --------------------------------------------------------------------------- on hand-made answers


class Scripted:
    """A predictor whose answer to each question is written in advance (keyed by question text)."""

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.cfg = SimpleNamespace(data=SimpleNamespace(image_size=S))

    def answer(self, images, questions, perturbation=None, desc=None):
        return [(self.script[q], 1.0) for q in questions]


def q(i, image, answer, qtype, atype, domain):
    return SimpleNamespace(key=f"k{i}", image=np.full((3, S, S), image, np.uint8), question=f"question {i}?",
                           answer=answer, question_type=qtype, answer_type=atype, domain=domain)


TRAIN = [{"question": "question 100?", "answer": a, "question_type": t, "answer_type": at}
         for a, t, at in [("no", "presence", "closed")] * 3 + [("yes", "presence", "closed")]
         + [("liver", "organ", "open")] * 2 + [("lung", "organ", "open")]]  # fmt: skip
# 4 images x 3 questions; d0 is a training domain, d1 is not
TEST = [q(0, 10, "no", "presence", "closed", "d0"), q(1, 10, "liver", "organ", "open", "d0"),
        q(2, 10, "yes", "presence", "closed", "d0"),
        q(3, 20, "yes", "presence", "closed", "d0"), q(4, 20, "lung", "organ", "open", "d0"),
        q(5, 20, "no", "presence", "closed", "d0"),
        q(6, 30, "no", "presence", "closed", "d1"), q(7, 30, "liver", "organ", "open", "d1"),
        q(8, 30, "yes", "presence", "closed", "d1"),
        q(9, 40, "yes", "presence", "closed", "d1"), q(10, 40, "lung", "organ", "open", "d1"),
        q(11, 40, "no", "presence", "closed", "d1")]  # fmt: skip
# the type prior answers "no" (presence) and "liver" (organ): right on 0, 1, 5, 6, 7, 11 -> 6/12
MODEL = ["no", "liver", "yes", "yes", "lung", "yes", "no", "lung", "no", "yes", "lung", "no"]  # 9/12 right
BLANK = ["no", "liver", "no", "no", "liver", "no", "no", "liver", "no", "yes", "liver", "no"]  # 7/12 right


def test_vqa_results_on_hand_made_answers():
    model = Scripted({s.question: a for s, a in zip(TEST, MODEL)})
    blank = Scripted({s.question: a for s, a in zip(TEST, BLANK)})
    r = E.vqa_results(model, TEST, TRAIN, {"d0"}, blank_predictor=blank, n_boot=500)
    assert r["n_images"] == 4 and r["bootstrap"]["unit"] == "image"
    assert r["vqa_overall"] == pytest.approx(9 / 12)
    assert r["vqa_closed"] == pytest.approx(6 / 8) and r["vqa_open"] == pytest.approx(3 / 4)
    assert r["vqa_in_domain"] == pytest.approx(5 / 6) and r["vqa_cross_domain"] == pytest.approx(4 / 6)
    assert r["n_vqa_cross_domain"] == 6
    assert r["majority_baseline"] == pytest.approx(4 / 12)  # "no" (3 of 7 train answers)
    assert r["type_prior_baseline"] == pytest.approx(6 / 12)
    assert r["type_prior_baseline_closed"] == pytest.approx(4 / 8)
    assert r["blank_image_baseline"] == pytest.approx(7 / 12)
    assert r["blank_image_baseline_cross_domain"] == pytest.approx(4 / 6)
    # the strongest baseline is chosen per subset; in the training domains blank and type prior tie at
    # 3/6 and the earlier one in BASELINES (the type prior) is named
    assert r["text_only_baseline"] == {"name": "blank_image", "accuracy": pytest.approx(7 / 12),
                                       "ci": r["blank_image_baseline_ci"]}
    assert r["text_only_baseline_in_domain"]["name"] == "type_prior"
    assert r["text_only_baseline_cross_domain"]["name"] == "blank_image"
    assert r["margin_over_text_only"] == pytest.approx(2 / 12)
    assert r["margin_over_text_only_cross_domain"] == pytest.approx(0.0)
    assert r["closed_margin_over_type_prior"] == pytest.approx(2 / 8)
    for key in ("vqa_overall", "type_prior_baseline", "margin_over_text_only", "closed_margin_over_type_prior"):
        lo, hi = r[f"{key}_ci"]
        assert lo <= r[key] <= hi, key
    # the margin's interval is the paired one, from the same resampled images
    boot = ImageBootstrap(E.image_ids(TEST), n_boot=500)
    hits = np.array([m == s.answer for m, s in zip(MODEL, TEST)], float)
    blank_hits = np.array([b == s.answer for b, s in zip(BLANK, TEST)], float)
    assert r["margin_over_text_only_ci"] == list(boot.interval(hits - blank_hits))
    rows = r["vqa_by_question_type"]
    assert rows["organ/open"]["n"] == 4 and rows["organ/open"]["type_prior"] == pytest.approx(2 / 4)
    assert rows["organ/open"]["blank_image"] == pytest.approx(2 / 4) and rows["organ/open"]["accuracy"] == 0.75
    assert len(rows["presence/closed"]["accuracy_ci"]) == 2
    assert set(r["vqa_by_domain"]) == {"d0", "d1"} and set(r["vqa_by_domain_ci"]) == {"d0", "d1"}


def test_image_ids_group_the_questions_of_one_image():
    ids = E.image_ids(TEST)
    assert len(set(ids)) == 4 and ids[0] == ids[1] == ids[2] != ids[3]


def test_image_ids_of_synthrad_follow_its_image_ids():
    """The pixel hash groups questions as SynthRad's own record of the image does."""
    from raymmr.data.images import image_array
    from raymmr.data.making.synthrad import generate_split

    samples = [s for s in generate_split("test", 4, image_size=S, num_domains=4, test_domain=3, seed=0)
               if s.kind == "vqa"]
    for s in samples:
        s.image = image_array(s.image, S)
    ids = E.image_ids(samples)
    assert len(set(ids)) == 4
    assert len({(i, s.extra["image_id"]) for i, s in zip(ids, samples)}) == 4  # the same partition


def test_markdown_states_intervals_and_margins():
    model = Scripted({s.question: a for s, a in zip(TEST, MODEL)})
    blank = Scripted({s.question: a for s, a in zip(TEST, BLANK)})
    r = {"split": "test", "role": "final", "n_vqa": 12, "n_captions": 0,
         **E.vqa_results(model, TEST, TRAIN, {"d0"}, blank_predictor=blank, n_boot=200)}
    md = E.results_markdown(r)
    lo, hi = r["vqa_overall_ci"]
    assert f"| VQA accuracy, overall | 75.0% | [{100 * lo:.1f}, {100 * hi:.1f}] |" in md
    assert "role **final**" in md
    assert "over the text-only baseline (same model fine-tuned on blank images, 58.3% [" in md
    assert "- unseen domain: +0.0 points [" in md and "no effect shown" in md  # a zero margin shows nothing
    assert "| organ/open | 4 | 75.0% [" in md


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def export_and_data(tmp_path_factory):
    """A random tiny model's export and a shard set whose test split has an unseen domain."""
    from raymmr.config import load_config
    from raymmr.data.making.writer import write_shards
    from raymmr.data.shards import read_manifest, shard_tokenizer
    from raymmr.data.tokenizer import load_tokenizer
    from raymmr.model.model import RaymmrModel

    root = tmp_path_factory.mktemp("evaluate")
    test = hand_samples("test", 15, size=S, start=100)
    for s in test[::2]:
        s.domain = "d9"  # never in train
    write_shards({"train": hand_samples("train", 24, size=S), "test": test}, root / "shards", image_size=S,
                 samples_per_shard=12, tokenizer_vocab_size=200, progress=False)
    cfg = load_config("tiny", overrides=[f"data.image_size={S}", f"model.image_size={S}"])
    tok = load_tokenizer(shard_tokenizer(str(root / "shards")))
    answers = read_manifest(root / "shards")["answers"]
    torch.manual_seed(0)
    model = RaymmrModel(cfg.model, vocab_size=len(tok), num_answers=len(answers), pad_token_id=tok.pad_token_id,
                        mask_token_id=tok.mask_token_id).eval()
    export = model.save_pretrained(root / "export", config=cfg, tokenizer=shard_tokenizer(str(root / "shards")),
                                   answers=answers)
    return str(export), str(root / "shards")


def test_evaluate_end_to_end_with_the_blank_image_model(export_and_data, tmp_path):
    export, data = export_and_data
    r = E.evaluate(export, data, str(tmp_path / "eval"), split="test", severities=("strong",), blank_export=export,
                   n_boot=200)
    assert (r["split"], r["role"], r["blank_model"]) == ("test", "final", export)
    for key in ("vqa_overall", "vqa_open", "vqa_closed", "vqa_in_domain", "vqa_cross_domain", "majority_baseline",
                "question_only_baseline", "type_prior_baseline", "blank_image_baseline",
                "type_prior_baseline_cross_domain", "blank_image_baseline_in_domain", "margin_over_text_only",
                "margin_over_text_only_cross_domain", "vqa_overall_perturbed_strong", "vqa_overall_drop_strong",
                "vqa_overall_unseen_jpeg_bias", "vqa_overall_unseen_typos", "vqa_overall_drop_unseen_typos"):
        assert key in r and f"{key}_ci" in r, key
        assert math.isnan(r[key]) or len(r[f"{key}_ci"]) == 2
    assert r["text_only_baseline"]["name"] in ("majority", "question_only", "type_prior", "blank_image")
    assert set(r["robustness_benchmark"]) == {"strong", "jpeg_bias", "typos"}
    for key in ("retrieval_mean_rank", "retrieval_mean_rank_perturbed_strong", "retrieval_mean_rank_unseen_typos",
                "retrieval_mean_rank_unseen_jpeg_bias", "retrieval_mean_rank_degradation_unseen_typos"):
        assert key in r, key
    lo, hi = r["retrieval_mean_rank_ci"]
    assert lo <= r["retrieval_mean_rank"] <= hi and len(r["retrieval_mean_rank_degradation_unseen_typos_ci"]) == 2
    assert r["retrieval_distinct_captions"] == r["retrieval_n"] == 5  # hand captions are distinct
    assert r["retrieval_chance_mean_rank"] == pytest.approx(3.0)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["role"] == "final" and saved["vqa_overall_ci"] == r["vqa_overall_ci"]
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "role **final**" in md and "| jpeg_bias | unseen |" in md and "| strong | seen |" in md
    assert "over the text-only baseline" in md
    # One row per question, so two models can be compared question by question (the ablation's pairs).
    rows = [json.loads(x) for x in (tmp_path / "eval" / E.QUESTIONS).read_text().splitlines()]
    assert len(rows) == r["n_vqa"] and len({q["key"] for q in rows}) == len(rows)
    assert sum(q["correct"]["clean"] for q in rows) / len(rows) == pytest.approx(r["vqa_overall"])
    assert sum(q["correct"]["strong"] for q in rows) / len(rows) == pytest.approx(r["vqa_overall_perturbed_strong"])


def test_evaluate_clean_only_and_roles(export_and_data, tmp_path):
    export, data = export_and_data
    r = E.evaluate(export, data, str(tmp_path / "val"), split="test", role="final", severities=())
    assert r["robustness_benchmark"] == {} and not any("unseen" in k or "perturbed" in k for k in r)
    assert "blank_image_baseline" not in r and r["text_only_baseline"]["name"] != "blank_image"
    with pytest.raises(ValueError, match="never on test"):
        E.evaluate(export, data, str(tmp_path / "x"), split="test", role="selection")
    with pytest.raises(ValueError, match="role 'best'"):
        E.evaluate(export, data, str(tmp_path / "x"), split="val", role="best")
    with pytest.raises(ValueError, match="unknown robustness sets"):
        E.evaluate(export, data, str(tmp_path / "x"), split="test", severities=("extreme",))
