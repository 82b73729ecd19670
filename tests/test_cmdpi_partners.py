"""Difference reconstruction's partners (CMDPI §3.3, "we sample another similar image"): one index
row per distinct image; a partner drawn afresh every epoch, uniformly among the other images whose
cosine is in [tau, SAME_IMAGE_COS), never the own image; reproducible per (seed, epoch, key)."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from raymmr.config import PerturbationConfig
from raymmr.data.loader import SAME_IMAGE_COS, Partners, decode_image, make_loader
from raymmr.data.making.writer import write_shards
from raymmr.data.schema import Sample
from raymmr.data.shards import read_manifest, shard_urls
from raymmr.data.tokenizer import load_tokenizer
from raymmr.train.partners import find_partners

TAU = 0.75
S = 16


def clustered(m: int, clusters: int = 5, d: int = 16, seed: int = 0) -> torch.Tensor:
    """[m, d] unit rows in ``clusters`` tight groups (cosine ~0.9 inside, ~0 across).
    Row m-1 is alone in its own direction, so it has no candidate."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters + 1, d, generator=g)
    group = torch.arange(m) % clusters
    group[-1] = clusters
    return torch.nn.functional.normalize(centres[group] + 0.3 * torch.randn(m, d, generator=g), dim=-1)


def reference_candidates(emb: torch.Tensor) -> list[set[int]]:
    """The rule, in float64 by hand: cosine in [TAU, SAME_IMAGE_COS), not the image itself."""
    cos = emb.double() @ emb.double().t()
    assert not ((cos - TAU).abs() < 1e-4).any(), "no pair on the threshold: fp32 and fp64 agree"
    ok = (cos >= TAU) & (cos < SAME_IMAGE_COS) & ~torch.eye(len(emb), dtype=torch.bool)
    return [set(row.nonzero().flatten().tolist()) for row in ok]


@pytest.fixture(scope="module")
def index():
    """30 images, image 0 shown twice more (a copy, another row at cosine 1: the same picture
    re-encoded) and asked about by two questions each."""
    emb = clustered(30)
    emb = torch.cat([emb, emb[:1]])  # row 30: the same picture as row 0
    image_of = {f"q{i}{s}": i for i in range(31) for s in "ab"}
    return Partners(image_of=image_of, embeddings=emb, images={}, threshold=TAU), reference_candidates(emb)


def test_draws_are_candidates_never_the_own_image_and_carry_their_cosine(index):
    partners, candidates = index
    assert candidates[0] and 30 not in candidates[0] and not candidates[29]  # the copy and the lone image
    keys = list(partners.image_of)
    for epoch in range(8):
        rows, cos = partners.draw(keys, f"0/{epoch}/")
        for key, row, c in zip(keys, rows.tolist(), cos.tolist()):
            own = partners.image_of[key]
            if not candidates[own]:
                assert row == -1 and c == 0.0, key
                continue
            assert row in candidates[own] and row != own, key
            assert TAU <= c < SAME_IMAGE_COS
            assert c == pytest.approx(float(partners.embeddings[own] @ partners.embeddings[row]), abs=1e-6)


def test_draws_change_with_the_epoch_and_repeat_for_the_same_seed_epoch_and_key(index):
    partners, candidates = index
    keys = [k for k, i in partners.image_of.items() if len(candidates[i]) >= 3]
    assert len(keys) >= 20
    first, again = partners.draw(keys, "0/0/")[0], partners.draw(keys, "0/0/")[0]
    assert torch.equal(first, again)
    # the same key in another batch, at another place: the same partner
    alone = torch.cat([partners.draw([k, "q29a"], "0/0/")[0][:1] for k in reversed(keys)]).flip(0)
    assert torch.equal(alone, first)
    later = partners.draw(keys, "0/1/")[0]
    assert (later != first).float().mean() > 0.5  # each key redraws among >= 3 candidates
    assert not torch.equal(partners.draw(keys, "1/0/")[0], first)  # another data seed


def test_draws_are_uniform_among_the_candidates(index):
    partners, candidates = index
    counts = Counter(partners.draw(["q3a"], f"0/{epoch}/")[0].item() for epoch in range(2000))
    assert set(counts) == candidates[3]
    expected = 2000 / len(candidates[3])
    assert all(abs(n - expected) < 5 * expected**0.5 for n in counts.values()), counts


def test_a_sample_outside_the_index_has_no_partner(index):
    partners, _ = index
    rows, cos = partners.draw(["not-indexed", "q1a"], "0/0/")
    assert rows[0].item() == -1 and cos[0].item() == 0.0 and rows[1].item() >= 0


# --------------------------------------------------------------------------- from the shards


@pytest.fixture(scope="module")
def shared_images(tmp_path_factory):
    """12 pictures, two questions about each: 24 samples, 12 images."""
    out = tmp_path_factory.mktemp("partners")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (S, S, 3), dtype=np.uint8)) for _ in range(12)]
    samples = [Sample(key=f"train-{i:02d}-{q}", kind="vqa", image=pictures[i], question=f"Question {q} {i}?",
                      answer="yes", answer_type="closed", question_type="presence", organ="head", split="train")
               for i in range(12) for q in ("a", "b")]  # fmt: skip
    write_shards({"train": samples}, out, image_size=S, samples_per_shard=5, tokenizer_vocab_size=100, progress=False)
    emb = clustered(12, clusters=3)
    key_to_row = {s.key: n for n, s in enumerate(samples)}
    per_sample = torch.stack([emb[int(s.key[6:8])] for s in samples])  # [24, D]: both questions, one embedding
    return out, key_to_row, per_sample, emb


def test_index_rows_are_images_and_only_candidates_keep_their_bytes(shared_images, capsys):
    out, key_to_row, per_sample, emb = shared_images
    partners = find_partners(key_to_row, per_sample, shard_urls(str(out), "train"), TAU, rank=0)
    assert partners.embeddings.shape == (12, emb.shape[1]) and partners.embeddings.dtype == torch.float32
    assert all(partners.image_of[f"train-{i:02d}-a"] == partners.image_of[f"train-{i:02d}-b"] for i in range(12))
    candidates = reference_candidates(partners.embeddings)
    assert set(partners.images) == {i for i, c in enumerate(candidates) if c}
    line = capsys.readouterr().out
    assert "22 of 24 training samples (91.7%)" in line and "12 distinct images" in line, line
    assert "candidates per image" in line and "MiB" in line


def test_the_loader_draws_a_fresh_partner_image_every_epoch(shared_images):
    out, key_to_row, per_sample, _ = shared_images
    urls = shard_urls(str(out), "train")
    partners = find_partners(key_to_row, per_sample, urls, TAU, rank=1)
    manifest = read_manifest(out)
    pictures = {i: torch.from_numpy(decode_image(b, S)) for i, b in partners.images.items()}

    def epoch(e):
        batches = make_loader(urls, tokenizer=load_tokenizer(out), answers=manifest["answers"], max_text_len=12,
                              batch_size=8, rank=0, world_size=1, epoch_mode="exact", samples_per_epoch=0,
                              shuffle_buffer=0, loader_workers=0, seed=0, epoch=e, perturbation=PerturbationConfig(),
                              image_size=S, manifest=manifest, partners=partners)  # fmt: skip
        drawn = {}
        for b in batches:
            for i, key in enumerate(b["key"]):
                own = partners.image_of[key]
                if not b["has_partner"][i]:
                    assert torch.equal(b["partner_image"][i], b["image"][i]) and b["partner_similarity"][i] == 0
                    drawn[key] = -1
                    continue
                row = next(r for r, p in pictures.items() if torch.equal(p, b["partner_image"][i]))
                assert row != own and TAU <= b["partner_similarity"][i].item() < SAME_IMAGE_COS
                drawn[key] = row
        return drawn

    zero = epoch(0)
    assert epoch(0) == zero and sorted(zero) == sorted(key_to_row)  # shard order and partners both repeat
    assert sum(v == -1 for v in zero.values()) == 2  # the lone image's two questions
    assert sum(zero[k] != v for k, v in epoch(1).items()) >= 8
