"""The fixed robustness benchmark (raymmr.eval.robustness): unseen ops are deterministic, change
their input and can never be trained on; every set is seeded per sample and independent of the
evaluated model's perturbation config."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raymmr import perturb
from raymmr.config import load_config
from raymmr.eval import robustness as R
from raymmr.eval.evaluate import answers, embeddings

S = 32


def grey_image(seed: int, size: int = S) -> torch.Tensor:
    """uint8 [3, S, S]: a smooth grey scan with some texture, channels equal (as SynthRad's)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.5 + 0.3 * np.sin(6 * x + rng.random()) * np.cos(4 * y) + 0.05 * rng.standard_normal((size, size))
    grey = np.clip(img * 255, 0, 255).astype(np.uint8)
    return torch.from_numpy(np.repeat(grey[None], 3, axis=0))


# --------------------------------------------------------------------------- the sets


def test_unseen_families_are_outside_every_training_op_list():
    assert not set(R.UNSEEN_IMAGE_OPS) & set(perturb.IMAGE_OPS)
    assert not set(R.UNSEEN_TEXT_OPS) & set(perturb.TEXT_OPS)
    for name in R.UNSEEN_SETS:
        spec = R.BENCHMARK_SETS[name]
        assert spec.family == "unseen" and set(spec.image_ops) <= set(R.UNSEEN_IMAGE_OPS)
        assert set(spec.text_ops) <= set(R.UNSEEN_TEXT_OPS) and (spec.image_ops or spec.text_ops)
    # ... and training cannot be configured to use them: raymmr.perturb refuses the names
    with pytest.raises(ValueError, match="unknown image perturbation"):
        perturb.SeededPerturbation("medium", ["jpeg"], [])
    with pytest.raises(ValueError, match="unknown text perturbation"):
        perturb.SeededPerturbation("medium", [], ["typos"])
    assert any(R.BENCHMARK_SETS[n].image_ops for n in R.UNSEEN_SETS)
    assert any(R.BENCHMARK_SETS[n].text_ops for n in R.UNSEEN_SETS)


def test_seen_sets_are_every_training_family_at_their_severity():
    for sev in R.SEEN_SETS:
        spec = R.BENCHMARK_SETS[sev]
        assert (spec.family, spec.severity, spec.image_ops, spec.text_ops) == (
            "seen", sev, perturb.IMAGE_OPS, perturb.TEXT_OPS)
    with pytest.raises(ValueError, match="unknown robustness benchmark set"):
        R.benchmark_set("extreme")


# --------------------------------------------------------------------------- unseen ops


@pytest.mark.parametrize("op", [R.bias_field, R.jpeg])
def test_unseen_image_ops_are_deterministic_and_change_the_image(op):
    x = grey_image(0).float() / 255
    once = op(x, torch.Generator().manual_seed(7))
    again = op(x, torch.Generator().manual_seed(7))
    other = op(x, torch.Generator().manual_seed(8))
    assert torch.equal(once, again)
    assert (once - x).abs().mean() > 0.005 and not torch.equal(once, other)
    assert once.shape == x.shape and once.min() >= 0 and once.max() <= 1
    assert torch.equal(once[0], once[1]) and torch.equal(once[0], once[2])  # a grey scan stays grey


def test_bias_field_is_smooth_and_within_its_gain():
    x = torch.full((3, S, S), 0.5)
    out = R.bias_field(x, torch.Generator().manual_seed(1))
    gain = out[0] / 0.5
    lo, hi = R.BIAS_FIELD_LOG_GAIN
    assert gain.log().abs().max() <= hi + 1e-5 and gain.log().abs().max() >= lo - 1e-5  # max |f| = 1
    assert gain.diff(dim=0).abs().max() < 0.15 and gain.diff(dim=1).abs().max() < 0.15  # no edges of its own


def test_typos_are_deterministic_change_long_words_and_spare_negations():
    text = "Is there a lesion in the enlarged left kidney? No mass, not the liver, without contrast."
    once = R.typos(text, random.Random(3))
    assert once == R.typos(text, random.Random(3)) and once != text
    words, typoed = text.split(), once.split()
    assert len(words) == len(typoed)  # edits stay inside words
    for w, t in zip(words, typoed):
        core = w.strip(perturb._EDGE_PUNCT)
        if len(core) < R.TYPO_MIN_LETTERS or core.lower() in perturb._NEGATIONS:
            assert w == t
    changed = sum(R.typos(text, random.Random(s)) != text for s in range(50))
    assert changed >= 45
    for s in range(200):  # every edit changes the word
        assert R.typo_word("lesion", random.Random(s)) != "lesion"
        assert R.typo_word("ll", random.Random(s)) != "ll"


# --------------------------------------------------------------------------- seeding


def test_benchmark_is_seeded_per_sample_not_per_batch():
    keys = [f"sample-{i}" for i in range(10)]
    images = torch.stack([grey_image(i) for i in range(10)])
    texts = [f"Is there a lesion in the left kidney number {i}?" for i in range(10)]
    for name in (*R.SEEN_SETS, *R.UNSEEN_SETS):
        p = R.BenchmarkPerturbation(name, keys)
        whole_img, whole_txt = p.images(images, 0), p.texts(texts, 0)
        batched_img = torch.cat([p.images(images[i : i + 3], i) for i in range(0, 10, 3)])
        batched_txt = sum((p.texts(texts[i : i + 3], i) for i in range(0, 10, 3)), [])
        assert torch.equal(whole_img, batched_img) and whole_txt == batched_txt, name
        # a sample is perturbed the same inside any subset or order of the set
        sub = R.BenchmarkPerturbation(name, [keys[7], keys[2]])
        assert torch.equal(sub.images(images[[7, 2]], 0), whole_img[[7, 2]])
        assert sub.texts([texts[7], texts[2]], 0) == [whole_txt[7], whole_txt[2]]
        spec = R.BENCHMARK_SETS[name]
        assert (not torch.equal(whole_img, images)) == bool(spec.image_ops), name
        assert (whole_txt != texts) == bool(spec.text_ops), name


class FakePredictor:
    """Predictor's interface without a model: batches its inputs as Predictor does, hands each
    batch to the perturbation, records what it was shown and answers from the pixels."""

    def __init__(self, image_ops, text_ops, batch_size=4):
        self.cfg = SimpleNamespace(data=SimpleNamespace(image_size=S),
                                   perturbation=SimpleNamespace(image_ops=image_ops, text_ops=text_ops))
        self.batch_size, self.shown_images, self.shown_texts = batch_size, [], []

    def _show(self, images, texts, perturbation) -> torch.Tensor:
        batches = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.stack(images[start : start + self.batch_size]))
            t = list(texts[start : start + self.batch_size])
            if perturbation is not None:
                x, t = perturbation.images(x, start), perturbation.texts(t, start)
            batches.append(x)
            self.shown_texts += t
        self.shown_images += batches
        return torch.cat(batches)

    def answer(self, images, questions, perturbation=None, desc=None):
        x = self._show(images, questions, perturbation)
        return [("yes" if im.float().mean() > 128 else "no", 1.0) for im in x]

    def embed_images(self, images, perturbation=None, desc=None):
        return self._show(images, [""] * len(images), perturbation).flatten(1).float()

    def embed_texts(self, texts, perturbation=None, desc=None):
        self._show([np.zeros((3, S, S), np.uint8)] * len(texts), texts, perturbation)
        return torch.tensor([[float(len(t))] for t in texts])


def vqa_samples(n=9):
    return [SimpleNamespace(key=f"img{i // 3}-q{i % 3}", image=grey_image(i // 3).numpy(),
                            question=f"Is the lesion in the left kidney {i}?", caption=f"A chest CT {i}.")
            for i in range(n)]


@pytest.mark.parametrize("shift", [*R.SEEN_SETS, *R.UNSEEN_SETS])
def test_evaluate_perturbs_by_the_benchmark_not_by_the_model_config(shift):
    """A model trained with noise only and one trained with every op meet the same perturbed inputs,
    whatever their batch size."""
    samples = vqa_samples()
    default = load_config("tiny").perturbation
    models = [FakePredictor(default.image_ops, default.text_ops, batch_size=4),
              FakePredictor(["noise"], [], batch_size=4), FakePredictor(["cutout"], ["shuffle"], batch_size=5)]
    got = [answers(m, samples, shift) for m in models]
    assert got[0] == got[1] == got[2]
    for m in models[1:]:
        assert torch.equal(torch.cat(m.shown_images), torch.cat(models[0].shown_images))
        assert m.shown_texts == models[0].shown_texts
    clean = FakePredictor(["noise"], [])
    answers(clean, samples)
    assert torch.equal(torch.cat(clean.shown_images), torch.from_numpy(np.stack([s.image for s in samples])))


def test_blank_answers_see_only_the_blank_image():
    from raymmr.data.images import BLANK_LEVEL

    m = FakePredictor(["noise"], [])
    assert answers(m, vqa_samples(), blank=True) == ["no"] * 9  # 128 is not > 128
    assert (torch.cat(m.shown_images) == BLANK_LEVEL).all()


def test_retrieval_reuses_the_clean_embeddings_of_an_untouched_modality():
    samples = vqa_samples(6)
    m = FakePredictor([], [])
    clean = embeddings(m, samples)
    typo_img, typo_txt = embeddings(m, samples, "typos", clean=clean)
    assert typo_img is clean[0] and typo_txt is not clean[1]
    jpeg_img, jpeg_txt = embeddings(m, samples, "jpeg_bias", clean=clean)
    assert jpeg_txt is clean[1] and not torch.equal(jpeg_img, clean[0])
    assert torch.equal(embeddings(m, samples, "typos")[0], clean[0])  # what reuse stands in for
