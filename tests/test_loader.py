"""Streaming loader: exact epochs across ranks x workers, resampled lengths, corrupt data, batch contract."""

import io
import json
import logging
import tarfile
from collections import Counter

import pytest
import torch
from test_shards import hand_samples

from raymmr.config import PerturbationConfig
from raymmr.data.images import encode_image
from raymmr.data.loader import iter_records, iter_samples, make_loader
from raymmr.data.making.writer import write_shards
from raymmr.data.shards import read_manifest, shard_urls
from raymmr.data.tokenizer import encode_texts, load_tokenizer

S = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    samples = {"train": hand_samples("train", 48, size=S), "val": hand_samples("val", 9, size=S, start=200)}
    write_shards(samples, out, image_size=S, samples_per_shard=6, tokenizer_vocab_size=300, progress=False)
    return out, read_manifest(out), load_tokenizer(out)


def loader(urls, data, **kw):
    _, manifest, tok = data
    args = dict(tokenizer=tok, answers=manifest["answers"], max_text_len=12, batch_size=4, rank=0, world_size=1,
                epoch_mode="exact", samples_per_epoch=0, shuffle_buffer=8, loader_workers=0, seed=0, epoch=0,
                perturbation=PerturbationConfig(), image_size=S, manifest=manifest)
    return make_loader(urls, **{**args, **kw})


def test_exact_epoch_two_ranks_two_workers_yield_every_key_once(data):
    out, manifest, _ = data
    urls = shard_urls(str(out), "train")
    assert len(urls) == 8
    keys = []
    for rank in range(2):
        for batch in loader(urls, data, rank=rank, world_size=2, loader_workers=2, epoch=3):
            keys += batch["key"]
            assert int(batch["skipped"]) == 0
    expected = {s.key for s in hand_samples("train", 48, size=S)}
    assert Counter(keys) == Counter(expected)


def test_exact_epoch_order_depends_on_epoch_and_is_reproducible(data):
    urls = shard_urls(str(data[0]), "train")
    run = lambda epoch: [k for b in loader(urls, data, epoch=epoch) for k in b["key"]]  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1) and sorted(run(0)) == sorted(run(1))


def test_resampled_gives_every_rank_the_same_number_of_full_batches(data):
    urls = shard_urls(str(data[0]), "train")
    counts = []
    for rank in range(2):
        batches = list(loader(urls, data, rank=rank, world_size=2, loader_workers=2, epoch_mode="resampled",
                              samples_per_epoch=40, batch_size=3))
        assert all(len(b["key"]) == 3 for b in batches)
        counts.append(len(batches))
    assert counts == [40 // (3 * 2)] * 2
    # samples_per_epoch=0 means the manifest's count of these shards (48)
    assert len(list(loader(urls, data, epoch_mode="resampled", batch_size=5))) == 48 // 5


def test_batch_fields_and_dtypes_follow_the_contract(data):
    out, manifest, tok = data
    batches = list(loader(shard_urls(str(out), "train")[:1], data, shuffle_buffer=0))
    b = batches[0]
    B, L = 4, 12
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (B, 3, S, S)
    for name in ("text_ids", "text_mask", "text_ids_strong", "text_mask_strong", "text_ids_light", "text_mask_light"):
        assert b[name].dtype == torch.int64 and b[name].shape == (B, L), name
    for name in ("answer", "answer_type", "question_type", "organ", "domain"):
        assert b[name].dtype == torch.int64 and b[name].shape == (B,), name
    assert b["is_caption"].dtype == torch.bool and b["skipped"].dtype == torch.int64 and b["skipped"].dim() == 0
    assert b["key"] == ["train-0000-cap", "train-0001-q", "train-0002-q", "train-0003-cap"]
    assert b["is_caption"].tolist() == [True, False, False, True]
    assert b["answer"][0] == -100 and b["answer"][3] == -100
    assert manifest["answers"][b["answer"][1]] == "no" and manifest["answers"][b["answer"][2]] == "left"
    assert b["answer_type"].tolist() == [-1, 1, 1, -1]
    assert b["question_type"].tolist() == [-1, 0, 0, -1]
    assert [manifest["organs"][i] for i in b["organ"]] == ["chest", "head", "head", "chest"]
    assert [manifest["domains"][i] for i in b["domain"]] == ["d0", "d1", "d0", "d1"]
    ids, mask = encode_texts(tok, ["Caption number 0."], L)
    assert torch.equal(b["text_ids"][0], ids[0]) and torch.equal(b["text_mask"][0], mask[0])
    assert b["text_ids"][0, 0] == tok.cls_token_id and (b["text_ids"][b["text_mask"] == 0] == 0).all()
    assert [len(x["key"]) for x in batches] == [4, 2]  # exact mode keeps the short last batch


def test_text_perturbation_is_seeded_per_sample_and_severity_none_is_identity(data):
    urls = shard_urls(str(data[0]), "train")
    a = next(iter(loader(urls, data, shuffle_buffer=0)))
    b = next(iter(loader(urls, data, shuffle_buffer=0, loader_workers=1)))
    assert torch.equal(a["text_ids_strong"], b["text_ids_strong"])  # same with or without a worker process
    none = PerturbationConfig(strong="none", light="none")
    c = next(iter(loader(urls, data, shuffle_buffer=0, perturbation=none)))
    assert torch.equal(c["text_ids_strong"], c["text_ids"]) and torch.equal(c["text_ids_light"], c["text_ids"])


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def test_corrupt_members_and_truncated_shards_are_skipped_counted_and_named(data, tmp_path, caplog):
    good = hand_samples("x", 4, size=S)
    jpg = encode_image(good[0].image, S)
    record = lambda s: json.dumps(s.record()).encode()  # noqa: E731
    bad = tmp_path / "bad-000000.tar"
    with tarfile.open(bad, "w") as tar:
        for s in good[:2]:
            _add(tar, f"{s.key}.jpg", jpg)
            _add(tar, f"{s.key}.json", record(s))
        _add(tar, "broken-image.jpg", b"\xff\xd8 not a jpeg")
        _add(tar, "broken-image.json", record(good[2]))
        _add(tar, "broken-json.jpg", jpg)
        _add(tar, "broken-json.json", b"{oops")
        _add(tar, "no-text.jpg", jpg)
        _add(tar, "evil.pickle", b"cos\nsystem\n")  # unknown extensions are never decoded
        _add(tar, f"{good[3].key}.jpg", jpg)
        _add(tar, f"{good[3].key}.json", record(good[3]))
    full = (data[0] / "val-000000.tar").read_bytes()
    truncated = tmp_path / "trunc-000000.tar"
    truncated.write_bytes(full[: len(full) // 2])
    with caplog.at_level(logging.WARNING, logger="raymmr.data"):
        batches = list(loader([str(bad), str(truncated)], data, shuffle_buffer=0, batch_size=3))
    keys = [k for b in batches for k in b["key"]]
    assert keys[:3] == [good[0].key, good[1].key, good[3].key]
    assert not {"broken-image", "broken-json", "no-text", "evil"} & set(keys)
    skipped = sum(int(b["skipped"]) for b in batches)
    assert skipped >= 3 + 1  # three bad members + at least the sample cut by the truncation
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(bad) in messages and "broken-image" in messages and str(truncated) in messages
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1  # one warning per shard


def test_truncation_counts_the_lost_samples_the_manifest_promised(data, tmp_path):
    out, manifest, _ = data
    full = (out / "val-000000.tar").read_bytes()
    (tmp_path / "val-000000.tar").write_bytes(full[: len(full) * 2 // 3])
    batches = list(loader([str(tmp_path / "val-000000.tar")], data, manifest=manifest, shuffle_buffer=0, batch_size=2))
    seen = sum(len(b["key"]) for b in batches)
    assert 0 < seen < 6
    assert seen + sum(int(b["skipped"]) for b in batches) == 6  # the manifest says the shard holds 6


def test_pipe_urls_stream_like_files(data):
    out = data[0]
    urls = [f"pipe:cat {u}" for u in shard_urls(str(out), "val")]
    assert sum(len(b["key"]) for b in loader(urls, data, manifest=None)) == 9


def test_iter_samples_and_records_keep_order_and_decode_images(data):
    urls = shard_urls(str(data[0]), "val")
    samples = list(iter_samples(urls))
    assert [s.key for s in samples] == [s.key for s in hand_samples("val", 9, start=200)]
    assert samples[0].image.size == (S, S)
    assert {s.answer for s in samples if s.kind == "vqa"} <= {"yes", "no", "left"}
    assert [r["key"] for r in iter_records(urls)] == [s.key for s in samples]


def test_clear_errors_for_unusable_arguments(data):
    urls = shard_urls(str(data[0]), "val")
    with pytest.raises(ValueError, match="not one batch"):
        loader(urls, data, epoch_mode="resampled", samples_per_epoch=3, batch_size=4)
    with pytest.raises(ValueError, match="no shard"):
        loader([], data)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        loader(urls, data, epoch_mode="resampled", manifest=None)


def test_unreachable_shards_are_counted_not_fatal(data, tmp_path, caplog):
    urls = ["pipe:false", str(tmp_path / "missing-000000.tar")] + shard_urls(str(data[0]), "val")
    with caplog.at_level(logging.WARNING, logger="raymmr.data"):
        batches = list(loader(urls, data, manifest=None, shuffle_buffer=0))
    assert sum(len(b["key"]) for b in batches) == 9
    assert sum(int(b["skipped"]) for b in batches) == 2
    assert "pipe:false" in caplog.text and "missing-000000.tar" in caplog.text


def test_records_with_odd_label_types_still_batch(data, tmp_path):
    s = hand_samples("y", 3, size=S)[1]
    record = s.record()
    record.update(answer=1, organ=None, question_type=["presence"])  # hand-made shards get this wrong
    path = tmp_path / "odd-000000.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, f"{s.key}.jpg", encode_image(s.image, S))
        _add(tar, f"{s.key}.json", json.dumps(record).encode())
    b = next(iter(loader([str(path)], data)))
    assert b["key"] == [s.key] and b["organ"].tolist() == [-1] and b["question_type"].tolist() == [-1]
    assert b["answer"].tolist() == [-100]  # "1" is not in this vocabulary


@pytest.mark.parametrize("mode", ["exact", "resampled"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_restart_continues_the_exact_sample_sequence(data, mode, workers):
    """Stop after k batches, save the LoaderPosition, start a new loader from it: the batches that
    follow are exactly those of the uninterrupted loader (none replayed, none skipped), for every
    stopping point, with and without DataLoader workers."""
    from raymmr.data.loader import LoaderPosition

    urls = shard_urls(str(data[0]), "train")
    kw = dict(epoch_mode=mode, samples_per_epoch=40, loader_workers=workers, shuffle_buffer=8, epoch=2)
    whole = [b["key"] for b in loader(urls, data, **kw)]
    assert len(whole) >= 6
    for k in (1, 3, len(whole) - 1):
        position = LoaderPosition(epoch=2, workers=workers)
        it = iter(loader(urls, data, **kw))
        for _ in range(k):
            position.consumed(next(it)["position"])
        del it
        saved = LoaderPosition.from_dict(json.loads(json.dumps(position.to_dict())))  # as a checkpoint keeps it
        rest = [b["key"] for b in loader(urls, data, **kw, start=saved.roles, phase=saved.next_role)]
        assert rest == whole[k:], f"stopped after {k} of {len(whole)} batches"


def test_partner_images_ride_with_their_samples(data):
    """Each sample's drawn partner image (its encoded bytes from the shards) decoded beside it with
    its cosine; samples without a candidate, or not in the index, get their own image,
    has_partner False and partner_similarity 0."""
    from raymmr.data.loader import Partners, decode_image, read_images

    out, _, _ = data
    urls = shard_urls(str(out), "train")
    keys = ["train-0000-cap", "train-0001-q", "train-0002-q", "train-0005-q", "train-0039-cap"]
    image_of, encoded = read_images(urls, set(keys))
    assert set(image_of) == set(keys) and len(encoded) == 5  # five different pictures
    emb = torch.eye(5)  # nobody is similar ...
    for a, b in [("train-0000-cap", "train-0039-cap"), ("train-0001-q", "train-0005-q")]:  # ... but two pairs
        emb[image_of[b]] = 0.9 * emb[image_of[a]] + 0.1 * emb[image_of[b]]
    emb = torch.nn.functional.normalize(emb, dim=-1)
    partners = Partners(image_of=image_of, embeddings=emb, images=dict(enumerate(encoded)), threshold=0.75)
    b = next(iter(loader(urls[:1], data, shuffle_buffer=0, partners=partners)))
    assert b["key"][:4] == ["train-0000-cap", "train-0001-q", "train-0002-q", "train-0003-cap"]
    assert b["has_partner"].tolist() == [True, True, False, False]
    assert b["partner_similarity"].tolist() == pytest.approx([0.9 / 0.82**0.5] * 2 + [0.0, 0.0], abs=1e-6)
    partner = torch.from_numpy(decode_image(encoded[image_of["train-0039-cap"]], S))
    assert torch.equal(b["partner_image"][0], partner)
    assert torch.equal(b["partner_image"][2], b["image"][2]) and torch.equal(b["partner_image"][3], b["image"][3])
    assert "partner_image" not in next(iter(loader(urls[:1], data, shuffle_buffer=0)))


def test_resampled_mode_counts_each_draw_of_an_unreadable_image(data, tmp_path):
    """A JPEG with a zeroed header, drawn twice in a resampled epoch, is counted twice: in one
    process, and split over two loader workers (each its own pass over the shard)."""
    good = hand_samples("z", 6, size=S)
    bad = tmp_path / "zeroed-000000.tar"
    with tarfile.open(bad, "w") as tar:
        for i, s in enumerate(good):
            jpg = encode_image(s.image, S)
            _add(tar, f"{s.key}.jpg", b"\x00" * 16 + jpg[16:] if i == 2 else jpg)
            _add(tar, f"{s.key}.json", json.dumps(s.record()).encode())
    for workers in (0, 2):
        batches = list(loader([str(bad)], data, epoch_mode="resampled", samples_per_epoch=12, batch_size=2,
                              shuffle_buffer=0, loader_workers=workers))
        keys = [k for b in batches for k in b["key"]]
        assert len(keys) == 12 and good[2].key not in keys
        # 12 good samples = two passes over the 5 readable ones (+2): the bad one was met twice.
        assert sum(int(b["skipped"]) for b in batches) == 2, workers


def test_kinds_keeps_only_those_samples_and_a_split_without_them_is_an_error(data, tmp_path):
    """Fine-tuning reads VQA samples only: every caption of the split is left out (exact mode:
    every VQA sample once; resampled: full batches of VQA), and a split of captions alone is a
    clear error rather than an endless search."""
    urls = shard_urls(str(data[0]), "train")
    everything = hand_samples("train", 48, size=S)
    vqa = {s.key for s in everything if s.kind == "vqa"}
    assert 0 < len(vqa) < len(everything)
    keys = [k for b in loader(urls, data, kinds=("vqa",)) for k in b["key"]]
    assert Counter(keys) == Counter(vqa)
    batches = list(loader(urls, data, kinds=("vqa",), epoch_mode="resampled", samples_per_epoch=24, batch_size=4))
    assert len(batches) == 6 and all(b["is_caption"].sum() == 0 and len(b["key"]) == 4 for b in batches)
    captions = tmp_path / "captions-000000.tar"
    with tarfile.open(captions, "w") as tar:
        for s in everything:
            if s.kind == "caption":
                _add(tar, f"{s.key}.jpg", encode_image(s.image, S))
                _add(tar, f"{s.key}.json", json.dumps(s.record()).encode())
    with pytest.raises(RuntimeError, match="yielded no vqa sample"):
        list(loader([str(captions)], data, kinds=("vqa",), epoch_mode="resampled", samples_per_epoch=8,
                    manifest=None))


@pytest.mark.parametrize("cuda, gpus, pinned", [(False, 0, False), (False, 1, False), (True, 0, False), (True, 1, True)])
def test_batches_are_pinned_only_for_a_rank_that_trains_on_a_gpu(monkeypatch, cuda, gpus, pinned):
    from raymmr.config import load_config
    from raymmr.train.setup import stage_loader_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = load_config("tiny", [f"train.gpus_per_worker={gpus}"])
    manifest = {"answers": ["yes", "no"]}
    assert stage_loader_args(cfg, "pretrain", None, manifest, rank=0, world_size=1)["pin_memory"] is pinned
