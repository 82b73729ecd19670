"""Image and text perturbations: determinism, identity at "none", graded severity, validity."""

from __future__ import annotations

import difflib
import random
import time

import pytest
import torch

from raymmr.perturb import (
    IMAGE_OPS,
    SEVERITIES,
    TEXT_OPS,
    _down_up_matrix,
    _gaussian_matrix,
    perturb_images,
    perturb_text,
    severity_parameters,
    synonym_table,
)

torch.set_num_threads(1)
GRADED = ("light", "medium", "strong")


def phantom(batch: int = 8, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth radiology-like images (a bright disc on a gradient, slight texture) in [0, 1]:
    natural images are smooth, so blur/downsample effects are graded as they are in practice
    (pure noise images would lose everything to any blur)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(batch, 2, generator=g) * 0.8 - 0.4
    radius = 0.25 + 0.3 * torch.rand(batch, 1, 1, generator=g)
    d = ((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2).sqrt()
    disc = torch.sigmoid((radius - d) * 20)
    img = 0.2 + 0.3 * (xs + 1) / 2 + 0.4 * disc + 0.03 * torch.rand(batch, size, size, generator=g)
    return img.clamp(0, 1).unsqueeze(1).repeat(1, 3, 1, 1)


def change(severity: str, ops: list[str], seed: int = 0) -> float:
    x = phantom(16)
    y = perturb_images(x, severity, ops, torch.Generator().manual_seed(seed))
    return (y - x).abs().mean().item()


# ------------------------------------------------------------------------------------- images
def test_none_and_empty_ops_are_identity():
    x = phantom()
    assert perturb_images(x, "none", list(IMAGE_OPS)) is x
    assert perturb_images(x, "strong", []) is x


@pytest.mark.parametrize("op", IMAGE_OPS)
def test_images_deterministic_given_generator(op):
    x = phantom()
    a = perturb_images(x, "medium", [op], torch.Generator().manual_seed(3))
    b = perturb_images(x, "medium", [op], torch.Generator().manual_seed(3))
    c = perturb_images(x, "medium", [op], torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("op", [*IMAGE_OPS, "all"])
def test_stronger_severity_changes_images_more(op):
    ops = list(IMAGE_OPS) if op == "all" else [op]
    light, medium, strong = (change(s, ops) for s in GRADED)
    assert 0 < light < medium < strong, (light, medium, strong)


@pytest.mark.parametrize("severity", GRADED)
def test_output_range_shape_dtype_and_input_untouched(severity):
    x = phantom().double()
    before = x.clone()
    y = perturb_images(x, severity, list(IMAGE_OPS), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.float64
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before)


@pytest.mark.parametrize("op", IMAGE_OPS)
def test_each_sample_draws_its_own_parameters(op):
    x = phantom(1).repeat(6, 1, 1, 1)  # six copies of one image
    y = perturb_images(x, "strong", [op], torch.Generator().manual_seed(0))
    per_sample = (y - x).abs().mean(dim=(1, 2, 3))
    assert len(set(per_sample.tolist())) == 6  # six different draws, not one broadcast draw


def test_resampling_matrices_preserve_flat_images():
    """Rows sum to one, so neither blur nor down-up sampling darkens borders or shifts levels."""
    sigma = torch.tensor([0.5, 1.7, 3.0])
    factor = torch.tensor([1.3, 2.6, 4.0])
    for m in (_gaussian_matrix(37, sigma), _down_up_matrix(37, factor)):
        assert torch.allclose(m.sum(-1), torch.ones(3, 37), atol=1e-5)
    flat = torch.full((3, 3, 37, 37), 0.6)
    out = perturb_images(flat, "strong", ["blur", "downsample"], torch.Generator().manual_seed(0))
    assert torch.allclose(out, flat, atol=1e-5)


def test_blur_matrix_holds_no_subnormal_weights_and_blurs_as_the_full_gaussian():
    """The Gaussian's far tail is cut to exact zeros (subnormal weights made the blur's CPU matmuls
    ~10x slower); what it blurs is what the uncut Gaussian blurs, to the last bit at 64 px."""
    sigma = torch.tensor([0.5, 0.7, 1.0, 1.8, 3.0])
    m = _gaussian_matrix(64, sigma)
    tiny = torch.finfo(torch.float32).tiny
    assert m[m > 0].min() > 1e-32  # no subnormal weight, nor one a dark pixel would make subnormal
    pos = torch.arange(64, dtype=torch.float32)
    full = torch.exp(-((pos[:, None] - pos[None, :]) ** 2)[None] / (2 * sigma[:, None, None] ** 2))
    assert ((full > 0) & (full < tiny)).any()  # what the cut removes
    full = full / full.sum(-1, keepdim=True)
    x = torch.cat([phantom(5, 64), phantom(5, 64, seed=1) * 1e-3])  # bright and nearly black images
    x5 = x.view(2, 5, 3, 64, 64)
    for img in x5:
        cut = torch.matmul(torch.matmul(m.unsqueeze(1), img), m.transpose(1, 2).unsqueeze(1))
        uncut = torch.matmul(torch.matmul(full.unsqueeze(1), img), full.transpose(1, 2).unsqueeze(1))
        assert torch.equal(cut, uncut)


def test_cutout_hole_size_follows_severity():
    x = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for severity, (lo, hi) in zip(GRADED, [(0.10, 0.16), (0.16, 0.25), (0.25, 0.35)]):
        y = perturb_images(x, severity, ["cutout"], torch.Generator().manual_seed(1))
        area = (y != x).any(dim=1).float().mean(dim=(1, 2))  # changed-pixel fraction per sample
        assert ((area >= round(lo * 64) ** 2 / 64**2 - 0.01) & (area <= round(hi * 64) ** 2 / 64**2 + 1e-6)).all()


def test_bad_image_arguments():
    x = phantom()
    with pytest.raises(ValueError, match="none, light, medium, strong"):
        perturb_images(x, "hard", ["noise"])
    with pytest.raises(ValueError, match="rotate.*allowed: gamma, blur, downsample, noise, cutout"):
        perturb_images(x, "light", ["noise", "rotate"])
    with pytest.raises(ValueError, match="list of names"):
        perturb_images(x, "light", "noise")
    with pytest.raises(ValueError, match="float tensor"):
        perturb_images((x * 255).to(torch.uint8), "light", ["noise"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator():
    x = phantom()
    cpu = perturb_images(x, "strong", list(IMAGE_OPS), torch.Generator().manual_seed(0))
    gpu = perturb_images(x.cuda(), "strong", list(IMAGE_OPS), torch.Generator().manual_seed(0))
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-4)


# --------------------------------------------------------------------------------------- text
REPORT = (
    "Axial computed tomography of the abdomen shows a large lesion in the left kidney. "
    "No pneumothorax is seen. The patient has a history of fracture of the right femur. "
    "Magnetic resonance imaging was not performed."
)


def test_text_none_and_empty_ops_are_identity():
    assert perturb_text(REPORT, "none", list(TEXT_OPS), random.Random(0)) == REPORT
    assert perturb_text(REPORT, "strong", [], random.Random(0)) == REPORT


def test_text_deterministic_given_rng():
    outs = {perturb_text(REPORT, "medium", list(TEXT_OPS), random.Random(7)) for _ in range(3)}
    assert len(outs) == 1
    assert len({perturb_text(REPORT, "medium", list(TEXT_OPS), random.Random(s)) for s in range(10)}) > 5


def test_text_severities_ordered():
    def similarity(severity):
        rng = random.Random(0)
        ratios = [
            difflib.SequenceMatcher(
                None, REPORT.split(), perturb_text(REPORT, severity, list(TEXT_OPS), rng).split()
            ).ratio()
            for _ in range(200)
        ]
        return sum(ratios) / len(ratios)

    light, medium, strong = (similarity(s) for s in GRADED)
    assert 1 > light > medium > strong


def test_delete_shortens_but_keeps_negations_and_a_word():
    rng = random.Random(0)
    lengths = [len(perturb_text(REPORT, "strong", ["delete"], rng).split()) for _ in range(100)]
    assert max(lengths) <= len(REPORT.split()) and sum(lengths) / 100 < 0.9 * len(REPORT.split())
    for s in range(50):
        out = perturb_text(REPORT, "strong", ["delete"], random.Random(s)).split()
        assert "No" in out and "not" in out
    assert all(perturb_text("Cardiomegaly.", "strong", list(TEXT_OPS), random.Random(s)) for s in range(200))


def test_synonym_swaps_come_from_the_table():
    table = synonym_table()
    assert "CT" in table["computed tomography"] and "computed tomography" in table["ct"]
    assert "lt" in table["left"] and "MRI" in table["magnetic resonance imaging"] and "abd" in table["abdomen"]
    assert set(table["lesion"]) >= {"mass", "nodule"}
    seen = set()
    for s in range(30):
        out = perturb_text(
            "Axial computed tomography of the left abdomen shows a lesion.", "strong", ["synonym"], random.Random(s)
        )
        seen.update(out.rstrip(".").split())
    assert {"CT", "lt", "abd"} <= seen and seen & {"mass", "nodule", "abnormality"}
    # Capitalised words keep the capital; punctuation around a swapped phrase stays in place.
    outs = {perturb_text("Left lung (on CT).", "strong", ["synonym"], random.Random(s)) for s in range(40)}
    assert "Lt lung (on computed tomography)." in outs


def test_sentence_drop_keeps_at_least_one_sentence():
    sentences = [x + "." for x in REPORT.rstrip(".").split(". ")]
    kept_counts = set()
    for s in range(100):
        out = [
            x + "." for x in perturb_text(REPORT, "strong", ["sentence_drop"], random.Random(s)).rstrip(".").split(". ")
        ]
        assert out and all(x in sentences for x in out) and out == sorted(out, key=sentences.index)
        kept_counts.add(len(out))
    assert 1 in kept_counts and len(kept_counts) >= 3
    assert perturb_text("One sentence only.", "strong", ["sentence_drop"], random.Random(0)) == "One sentence only."


def test_shuffle_is_a_local_permutation():
    words = [f"w{i}" for i in range(30)]
    for s in range(20):
        out = perturb_text(" ".join(words), "strong", ["shuffle"], random.Random(s)).split()
        assert sorted(out) == sorted(words)
        assert max(abs(out.index(w) - i) for i, w in enumerate(words)) < 3  # strong window k = 3


def test_bad_text_arguments():
    with pytest.raises(ValueError, match="none, light, medium, strong"):
        perturb_text(REPORT, "extreme", ["delete"], random.Random(0))
    with pytest.raises(ValueError, match="typo.*allowed: sentence_drop, synonym, delete, shuffle"):
        perturb_text(REPORT, "light", ["typo"], random.Random(0))


def test_text_is_fast_enough_for_the_loader():
    """The loader calls perturb_text twice per sample at >= 1000 samples/s."""
    rng, start = random.Random(0), time.perf_counter()
    for _ in range(2000):
        perturb_text(REPORT, "strong", list(TEXT_OPS), rng)
    assert time.perf_counter() - start < 1.0


def test_severity_parameters():
    assert severity_parameters("none") == {}
    assert severity_parameters("strong")["image.noise"] == (0.06, 0.12)
    assert set(SEVERITIES) == {"none", *GRADED}
