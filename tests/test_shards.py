"""Shard writing, the manifest, URL resolution and validation (incl. the real job via subprocess)."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymmr.config import load_config
from raymmr.data.images import encode_image
from raymmr.data.making.sets import make_synthrad_shards
from raymmr.data.making.validate import validate_shards
from raymmr.data.making.writer import write_shards
from raymmr.data.schema import Sample
from raymmr.data.shards import MANIFEST, ShardError, read_manifest, shard_urls
from raymmr.storage import open_url

ROOT = Path(__file__).resolve().parent.parent
JOB = [sys.executable, str(ROOT / "jobs" / "make_shards.py")]


def hand_samples(split, n, *, answers=("yes", "no", "left"), size=40, start=0):
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        image = Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8))  # not square: gets resized
        if i % 3 == 0:
            out.append(Sample(key=f"{split}-{i:04d}-cap", kind="caption", image=image, caption=f"Caption number {i}.",
                              domain=f"d{i % 2}", split=split, organ="chest"))
        else:
            out.append(Sample(key=f"{split}-{i:04d}-q", kind="vqa", image=image, question=f"Question {i}?",
                              answer=answers[i % len(answers)], answer_type="closed", question_type="presence",
                              domain=f"d{i % 2}", split=split, organ="head"))
    return out


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = write_shards({"train": hand_samples("train", 25), "test": hand_samples("test", 7, answers=("maybe",), start=100)},
                            out, image_size=32, samples_per_shard=10, tokenizer_vocab_size=200, progress=False)
    return out, manifest


def test_manifest_counts_checksums_and_vocabularies(shard_set):
    out, manifest = shard_set
    assert read_manifest(out) == manifest
    train = manifest["splits"]["train"]
    assert train["count"] == 25 and [s["count"] for s in train["shards"]] == [10, 10, 5]
    assert [s["name"] for s in train["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for split in manifest["splits"].values():
        for s in split["shards"]:
            data = (out / s["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert train["domains"] == ["d0", "d1"] and train["kinds"] == {"caption": 9, "vqa": 16}
    assert manifest["answers"][0] in ("yes", "no", "left") and "maybe" not in manifest["answers"]  # train-only vocab
    assert manifest["question_types"] == ["presence"] and manifest["organs"] == ["chest", "head"]
    assert manifest["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").is_file()


def test_standard_tar_readable_by_tar_and_plain_webdataset(shard_set):
    import webdataset as wds

    out, manifest = shard_set
    listing = subprocess.run(["tar", "tf", str(out / "train-000000.tar")], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    assert len(names) == 20 and {n.rsplit(".", 1)[1] for n in names} == {"jpg", "json"}
    urls = shard_urls(str(out), "train")
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 25
    assert samples[0]["jpg"].size == (32, 32)
    record = samples[0]["json"]
    assert record["schema_version"] == 1 and record["split"] == "train" and record["key"] == samples[0]["__key__"]


def test_identical_samples_give_identical_shards(tmp_path):
    for name in ("a", "b"):
        write_shards({"train": hand_samples("train", 5)}, tmp_path / name, image_size=16, samples_per_shard=10,
                     tokenizer_vocab_size=None, progress=False)
    assert (tmp_path / "a/train-000000.tar").read_bytes() == (tmp_path / "b/train-000000.tar").read_bytes()


def test_tokenizer_training_gives_the_same_file_in_every_process(tmp_path):
    """Report-like texts with their perturbed variants (many equally frequent merges): three
    processes with different hash seeds write the same tokenizer.json. (tokenizers' WordPiece
    trainer gave three different ones here: huggingface/tokenizers#1794.)"""
    code = (
        "import sys; from raymmr.data.tokenizer import train_tokenizer; "
        "texts = [f'the {o} shows a {s} lesion on the {side} side, approximately {n} mm, history of cardiomegaly' "
        "for o in ('chest', 'abdomen', 'head') for s in ('small', 'large', 'hyperdense') for side in ('left', 'right') "
        "for n in range(1, 30)]; train_tokenizer(texts, sys.argv[1], vocab_size=8192)"
    )
    for seed in ("1", "2", "3"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    files = [(tmp_path / seed / "tokenizer.json").read_bytes() for seed in ("1", "2", "3")]
    assert files[0] == files[1] == files[2]


def test_single_stream_is_routed_by_split_and_vocab_over_all_splits(tmp_path):
    samples = hand_samples("train", 6) + hand_samples("test", 4, answers=("maybe",), start=50)
    manifest = write_shards(iter(samples), tmp_path, image_size=16, samples_per_shard=4, vocab_splits=("all",),
                            tokenizer_vocab_size=None, progress=False)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 6, "test": 4}
    assert "maybe" in manifest["answers"] and manifest["vocab_splits"] == ["train", "test"]


def test_bad_keys_and_duplicates_are_refused(tmp_path):
    s = hand_samples("train", 2)
    s[1].key = "has.dot"
    with pytest.raises(ShardError, match="has.dot"):
        write_shards({"train": s}, tmp_path, image_size=16, samples_per_shard=4, tokenizer_vocab_size=None, progress=False)
    s = hand_samples("train", 2)
    s[1].key = s[0].key
    with pytest.raises(ShardError, match="twice"):
        write_shards({"train": s}, tmp_path, image_size=16, samples_per_shard=4, tokenizer_vocab_size=None, progress=False)


def test_encode_image_passes_through_right_sized_jpeg_and_resizes_others():
    gray = Image.fromarray(np.full((20, 30), 128, np.uint8))
    data = encode_image(gray, 16)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (16, 16) and im.mode == "L" and im.format == "JPEG"
    assert encode_image(data, 16) is not None and encode_image(data, 16) == data
    with Image.open(io.BytesIO(encode_image(data, 8, "png"))) as im:
        assert im.size == (8, 8) and im.format == "PNG"


def test_shard_urls_for_directories_patterns_lists_and_remote(shard_set):
    out, _ = shard_set
    urls = shard_urls(str(out), "train")
    assert [Path(u).name for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert shard_urls(f"{out}/train-{{000000..000001}}.tar", "ignored") == urls[:2]
    assert shard_urls(f"{out}/train-*.tar", "x") == urls
    assert len(shard_urls(f"{out}/train-000000.tar,{out}/test-000000.tar", "x")) == 2
    with pytest.raises(ValueError, match=r"train-\{000007\.\.000009\}\.tar"):
        shard_urls(f"{out}/train-{{000007..000009}}.tar", "train")
    with pytest.raises(ValueError, match="no split 'val'"):
        shard_urls(str(out), "val")
    assert shard_urls("s3://bucket/sets/train-{0..2}.tar", "train") == [f"s3://bucket/sets/train-{i}.tar" for i in range(3)]
    assert read_manifest(f"{out}/train-{{000000..000002}}.tar")["splits"]["train"]["count"] == 25


def test_open_url_reads_local_files_and_pipes(shard_set):
    out, _ = shard_set
    path = out / "test-000000.tar"
    with open_url(f"pipe:cat {path}") as f:
        assert f.read() == path.read_bytes()
    with open_url(f"file://{path}") as f:
        assert f.read(512) == path.read_bytes()[:512]


def test_make_synthrad_shards_reuses_a_matching_set_and_regenerates_otherwise(tmp_path):
    cfg = load_config("tiny", ["data.synthrad_train=12", "data.synthrad_val=4", "data.synthrad_test=8",
                               "data.image_size=64", "data.samples_per_shard=20"])
    first = make_synthrad_shards(tmp_path, cfg.data, progress=False)
    mtime = (tmp_path / MANIFEST).stat().st_mtime_ns
    assert make_synthrad_shards(tmp_path, cfg.data, progress=False) == first
    assert (tmp_path / MANIFEST).stat().st_mtime_ns == mtime  # reused, not rewritten
    assert set(first["splits"]["test"]["domains"]) == {"site0", "site1", "site2", "site3"}
    assert "site3" not in first["splits"]["train"]["domains"]
    assert validate_shards(str(tmp_path))["ok"]
    cfg.data.synthrad_train = 16
    second = make_synthrad_shards(tmp_path, cfg.data, progress=False)
    assert second["config"]["images_train"] == 16 and second["splits"]["train"]["count"] > first["splits"]["train"]["count"]
    assert sorted(p.name for p in tmp_path.glob("train-*.tar")) == [s["name"] for s in second["splits"]["train"]["shards"]]


def test_validate_job_names_a_truncated_shard_and_a_bad_member(shard_set, tmp_path):
    src, _ = shard_set
    ok = subprocess.run(JOB + ["validate", str(src), "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in src.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    data = (bad / "train-000001.tar").read_bytes()
    (bad / "train-000001.tar").write_bytes(data[: len(data) // 2])
    # a member whose JSON is broken, re-packed into a tar of its own that the manifest lists
    with tarfile.open(bad / "test-000000.tar", "w") as tar:
        for name, payload in [("test-0100-cap.jpg", encode_image(hand_samples("t", 1)[0].image, 32)),
                              ("test-0100-cap.json", b"{not json")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    res = subprocess.run(JOB + ["validate", str(bad), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "train-000001.tar" in res.stdout and "truncated" in res.stdout
    assert "test-000000.tar:test-0100-cap.json: malformed JSON" in res.stdout
    assert "train-000000.tar" not in res.stdout.split("\n")[0]  # the good shard is not blamed


def test_job_reports_a_wrong_source_folder_without_traceback(tmp_path):
    res = subprocess.run(JOB + ["vqa-rad", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "nowhere" in res.stderr and "Traceback" not in res.stderr


def test_job_writes_synthrad_shards(tmp_path):
    out = tmp_path / "s"
    res = subprocess.run(JOB + ["synthrad", "--out", str(out), "--quiet", "--samples-per-shard", "25",
                                "--set", "data.synthrad_train=6", "--set", "data.synthrad_val=2", "--set", "data.synthrad_test=4"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["image_size"] == 64 and manifest["samples_per_shard"] == 25
    assert "train:" in res.stdout


def test_a_shard_set_upload_puts_the_manifest_last(tmp_path):
    import fsspec

    from raymmr import storage

    (tmp_path / "train-000000.tar").write_bytes(b"x" * 10)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("{}")
    fs = fsspec.filesystem("memory")
    calls = []
    original = fs.put_file
    fs.put_file = lambda src, dst, **kw: (calls.append(dst.rsplit("/", 1)[-1]), original(src, dst, **kw))
    try:
        storage.put(tmp_path, "memory://bucket/shards", last=MANIFEST)
    finally:
        fs.put_file = original
    assert calls[-1] == "manifest.json" and set(calls) == {"train-000000.tar", "tokenizer.json", "manifest.json"}
    assert fs.cat("/bucket/shards/train-000000.tar") == b"x" * 10


class FlakyStore:
    """``open_url`` of a store whose first ``failures`` opens break off with a connection reset after
    ``after`` bytes (0: the open itself fails), then serve the file whole."""

    def __init__(self, failures: int, after: int):
        self.failures, self.after, self.opens = failures, after, 0

    def __call__(self, url, mode="rb"):
        self.opens += 1
        data = Path(url).read_bytes()
        if self.opens > self.failures:
            return io.BytesIO(data)
        if self.after == 0:
            raise ConnectionResetError("connection reset by peer (open)")
        store = self

        class Breaking(io.BytesIO):
            def read(self, n=-1):
                if self.tell() >= store.after:
                    raise ConnectionResetError("connection reset by peer")
                return super().read(n if n is not None and n >= 0 else store.after - self.tell())
        return Breaking(data)


@pytest.mark.parametrize("after", [0, 30_000])
def test_transient_read_errors_are_retried_and_counted_apart_from_corrupt_members(shard_set, monkeypatch, after):
    """A store that fails some reads (at open, or mid-shard): the shard is read again from the
    sample reached, every sample comes exactly once, in order; the retries are counted, nothing is
    skipped. A store that keeps failing raises ShardReadError after the last retry (no silent loss)."""
    import raymmr.data.tario as tario

    url = shard_urls(str(shard_set[0]), "train")[0]
    clean = [s["__key__"] for s in tario.read_tar(url, tario.Problems())]
    assert len(clean) > 3 and Path(url).stat().st_size > 30_000 * (after > 0)
    waits: list[float] = []
    flaky = FlakyStore(failures=2, after=after)
    monkeypatch.setattr(tario.storage, "open_url", flaky)
    problems = tario.Problems()
    got = [s["__key__"] for s in tario.read_tar(url, problems, sleep=waits.append)]
    assert got == clean and problems.retried == 2 and problems.skipped == 0
    assert waits == list(tario.READ_RETRY_WAITS_S[:2]) and flaky.opens == 3
    monkeypatch.setattr(tario.storage, "open_url", FlakyStore(failures=100, after=after))
    problems, got = tario.Problems(), []
    with pytest.raises(tario.ShardReadError, match="still failing after 5 retries"):
        for s in tario.read_tar(url, problems, sleep=lambda _: None):
            got.append(s["__key__"])
    assert got == clean[: len(got)] and problems.retried == 5 and problems.skipped == 0
    # A missing shard is not a store hiccup: skipped whole at once, no retry.
    monkeypatch.setattr(tario.storage, "open_url", lambda url, mode="rb": open(url + ".missing", "rb"))
    problems = tario.Problems()
    assert list(tario.read_tar(url, problems, expected=7, sleep=lambda _: None)) == []
    assert problems.skipped == 7 and problems.retried == 0
