"""Shard sets raymmr did not write: img2dataset's layout (KEY.jpg + KEY.txt caption + KEY.json
metadata, no manifest) is indexed in place, validated, read by the loader and pre-trained on."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymmr.data.loader import iter_records, iter_samples
from raymmr.data.making.foreign import assign_splits, index_shards, parse_fields
from raymmr.data.making.validate import validate_shards
from raymmr.data.shards import ShardError, read_manifest, record_fields, shard_urls
from raymmr.data.tario import foreign_record

ROOT = Path(__file__).resolve().parent.parent
ORGANS = ("lung", "liver", "brain", "kidney")


def image_bytes(i: int, size: int, fmt: str) -> bytes:
    rng = np.random.default_rng(i)
    pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def img2dataset_set(root: Path, shards: int = 4, per_shard: int = 24, size: int = 80) -> Path:
    """What img2dataset writes with --output_format webdataset: NNNNN.tar shards of KEY.jpg,
    KEY.txt and KEY.json ({url, key, status, caption, width, height, ...}) plus a .parquet per
    shard, no manifest. Images are not square-cropped to raymmr's size. One sample per shard has
    an empty caption; one image is a .webp."""
    root.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                i = s * per_shard + j
                key = f"{s:05d}{j:04d}"
                organ = ORGANS[i % len(ORGANS)]
                caption = "" if j == per_shard - 1 else f"CT image of the {organ} showing a {'small' if i % 3 else 'large'} lesion."
                ext, fmt = ("webp", "WEBP") if i == 5 else ("jpg", "JPEG")
                add(tar, f"{key}.{ext}", image_bytes(i, size, fmt))
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps({
                    "url": f"https://example.org/{key}.jpg", "key": key, "status": "success", "caption": caption,
                    "source": f"site{i % 2}", "width": size, "height": size, "original_width": 512,
                    "original_height": 512, "exif": "{}", "sha256": hashlib.sha256(key.encode()).hexdigest(),
                }).encode())  # fmt: skip
        (root / f"{s:05d}.parquet").write_bytes(b"PAR1")  # img2dataset's per-shard metadata table
    return root


def test_index_writes_a_manifest_beside_the_shards_without_touching_them(tmp_path):
    data = img2dataset_set(tmp_path / "laion")
    before = {p.name: p.read_bytes() for p in data.glob("*.tar")}
    with pytest.raises(ShardError, match="tar shards without a manifest.json; index them in place"):
        read_manifest(str(data))
    manifest = index_shards(str(data), fields=parse_fields(["domain=json:source"]), rules={"val": "00003.tar"})
    assert {p.name: p.read_bytes() for p in data.glob("*.tar")} == before  # indexed in place, unchanged
    assert read_manifest(str(data)) == manifest
    assert [s["name"] for s in manifest["splits"]["val"]["shards"]] == ["00003.tar"]
    train = manifest["splits"]["train"]
    assert [s["name"] for s in train["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert train["count"] == 72 and train["skipped"] == 3 and train["kinds"] == {"caption": 69}
    assert all(s["sha256"] == hashlib.sha256(before[s["name"]]).hexdigest() for s in train["shards"])
    assert manifest["image_size"] == 80 and manifest["domains"] == ["site0", "site1"]
    assert manifest["tokenizer"] == "tokenizer.json" and (data / "tokenizer.json").exists()
    assert manifest["fields"] == {"caption": "txt", "domain": "json:source"}
    with pytest.raises(ShardError, match="already has a manifest.json"):
        index_shards(str(data))

    # Every reader reads the foreign records through the manifest's fields.
    fields = record_fields(str(data))
    records = list(iter_records(shard_urls(str(data), "train"), fields))
    assert len(records) == 69 and all(r["kind"] == "caption" and r["caption"] for r in records)
    assert records[0]["domain"] == "site0" and records[0]["split"] == ""
    samples = list(iter_samples(shard_urls(str(data), "val"), fields))
    assert len(samples) == 23 and samples[0].caption.startswith("CT image of the")
    assert validate_shards(str(data))["ok"], validate_shards(str(data))["errors"]


def test_fields_and_split_rules():
    raw = {"__key__": "k", "txt": b"  a  caption ", "json": json.dumps({"text": "from json", "src": 3}).encode()}
    assert foreign_record(raw, parse_fields([]))["caption"] == "a caption"
    record = foreign_record(raw, parse_fields(["caption=json:text", "domain=json:src"]), "val")
    assert (record["caption"], record["domain"], record["split"]) == ("from json", "3", "val")
    with pytest.raises(ValueError, match="JSON field 'title'"):
        foreign_record(raw, parse_fields(["caption=json:title"]))
    for bad in (["caption"], ["answer=json:a"], ["domain=txt"], ["caption=json:"]):
        with pytest.raises(ShardError, match="--field"):
            parse_fields(bad)
    names = [f"{i:05d}.tar" for i in range(40)]
    split = assign_splits(names, {}, 0.1, 0.05)
    assert sum(v == "val" for v in split.values()) == 4 and sum(v == "test" for v in split.values()) == 2
    assert assign_splits(list(reversed(names)), {}, 0.1, 0.05) == split  # by name, not by order
    ruled = assign_splits(names, {"val": "0000[0-1].tar"}, 0.0, 0.0)
    assert [n for n, s in ruled.items() if s == "val"] == ["00000.tar", "00001.tar"]


def test_validate_names_a_foreign_sample_without_caption_and_a_changed_shard(tmp_path):
    data = img2dataset_set(tmp_path / "set", shards=2, per_shard=6)
    index_shards(str(data), fields=parse_fields(["caption=json:caption"]))
    report = validate_shards(str(data))
    # The empty captions were counted at indexing (the loader skips them): named, as warnings.
    assert report["ok"] and any("00000005: no caption" in w for w in report["warnings"]), report
    with tarfile.open(data / "00001.tar", "a") as tar:
        add(tar, "extra.jpg", image_bytes(99, 80, "JPEG"))
    errors = validate_shards(str(data))["errors"]
    assert any("00001.tar" in e and "sha256" in e for e in errors), errors


@pytest.mark.slow
def test_index_validate_and_pretrain_on_img2dataset_shards(tmp_path):
    """As a user types it: index the img2dataset set in place, validate it, pre-train 4 tiny steps on
    it with --tracker mlflow; MLflow's own client finds the run, its loss at every log step, the
    config and the exported weights."""
    import mlflow
    from test_tracking import runs

    data = img2dataset_set(tmp_path / "laion")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(*args, timeout=600):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = run("jobs/make_shards.py", "index", str(data), "--split", "val=00003.tar", "--quiet")
    assert "train: 72 samples in 3 shards (3 without an image or caption" in out, out
    report = run("jobs/make_shards.py", "validate", str(data), "--quiet")
    assert "OK" in report.splitlines()[0], report
    run("jobs/pretrain.py", "--config", "tiny", "--data", str(data), "--steps", "4", "--out", str(tmp_path / "run"),
        "--set", "train.val_every=2", "--set", "train.val_batches=1", "--set", "train.checkpoint_every=4",
        "--set", "train.log_every=2", "--tracker", "mlflow", "--set", f"train.tracking_uri={store}",
        "--set", "train.batch_size=8", "--set", "data.loader_workers=0", "--set", "train.cpus_per_worker=1")
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [2, 4], metrics
    assert any("val_loss" in m for m in metrics), metrics  # the val split (00003.tar) was read
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
    found = runs(store, "raymmr-pretrain")
    assert len(found) == 1 and found[0].info.status == "FINISHED", found
    run_id = found[0].info.run_id
    client = mlflow.MlflowClient(store)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 4]
    assert found[0].data.params["train.steps"] == "4" and "val_loss" in found[0].data.metrics
    assert "export/model.safetensors" in [f.path for f in client.list_artifacts(run_id, "export")]


def test_a_set_without_val_is_refused_before_ray_naming_both_fixes(tmp_path):
    """`make_shards.py index` puts every shard in train by default: in-run validation would fail in
    every worker and every retry. The job refuses it before Ray starts, naming --val-fraction and
    train.val_every=0."""
    data = img2dataset_set(tmp_path / "set", shards=2, per_shard=6)
    index_shards(str(data))
    proc = subprocess.run([sys.executable, "jobs/pretrain.py", "--config", "tiny", "--data", str(data), "--steps", "2",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "has no split 'val' (it has train)" in err, err[-3000:]
    assert "--val-fraction" in err and "train.val_every=0" in err and "Traceback" not in err, err[-3000:]
    assert "Ray runtime started" not in err and not list((tmp_path / "run").glob("ray-*")), err[-3000:]


@pytest.mark.slow
def test_a_caption_corpus_of_one_split_pretrains_without_in_run_validation(tmp_path):
    """The same set pre-trains with train.val_every=0: no validation loader is built, and the job
    says that nothing is validated during the run."""
    data = img2dataset_set(tmp_path / "set", shards=2, per_shard=6)
    index_shards(str(data))
    proc = subprocess.run([sys.executable, "jobs/pretrain.py", "--config", "tiny", "--data", str(data), "--steps", "2",
                           "--out", str(tmp_path / "run"), "--set", "train.val_every=0", "--set", "train.batch_size=4",
                           "--set", "train.checkpoint_every=2", "--set", "data.loader_workers=0",
                           "--set", "train.cpus_per_worker=1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "train.val_every=0: no validation during the run" in out
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and not any(k.startswith("val_") for m in metrics for k in m), metrics


def test_a_caption_only_model_has_an_empty_answer_head():
    """A shard set without VQA answers builds a model with 0 answer classes (not an error); its
    VQA accuracy counts nothing as right."""
    import torch

    from raymmr.config import load_config
    from raymmr.eval.metrics import vqa_hits
    from raymmr.model.model import RaymmrModel

    cfg = load_config("tiny", ["data.image_size=32", "model.image_size=32"])
    model = RaymmrModel(cfg.model, vocab_size=50, num_answers=0, pad_token_id=0, mask_token_id=1).eval()
    with torch.no_grad():
        logits = model.answer_logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.ones(2, 8, dtype=torch.long),
                                     torch.ones(2, 8, dtype=torch.long))
    assert logits.shape == (2, 0)
    correct, asked = vqa_hits(logits, torch.tensor([-100, -100]), torch.tensor([True, False]))
    assert (correct.item(), asked.item()) == (0, 1)


def test_index_in_a_bucket_as_the_readme_shows(s3_server, tmp_path):
    """`make_shards.py index s3://...`: the manifest and tokenizer land in the bucket beside the
    shards, and the loader reads the set from there."""
    from raymmr import storage

    local = img2dataset_set(tmp_path / "set", shards=3, per_shard=6)
    url = s3_server.url("laion-med")
    for tar in sorted(local.glob("*.tar")):
        storage.put(tar, f"{url}/{tar.name}")
    before = {k for k in s3_server.keys("laion-med/")}
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "make_shards.py"), "index", url, "--val-fraction", "0.3",
                           "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert set(s3_server.keys("laion-med/")) == before | {"laion-med/manifest.json", "laion-med/tokenizer.json"}
    manifest = read_manifest(url)
    assert len(manifest["splits"]["val"]["shards"]) == 1 and len(manifest["splits"]["train"]["shards"]) == 2
    records = list(iter_records(shard_urls(url, "train"), record_fields(url)))
    assert len(records) == 10 and all(r["caption"] for r in records)


def test_fine_tuning_refuses_a_caption_only_set_before_ray_and_counts_only_what_it_reads(tmp_path):
    from raymmr.errors import JobError
    from raymmr.train.launch import check_has_samples
    from raymmr.train.setup import epoch_samples

    data = img2dataset_set(tmp_path / "set", shards=2, per_shard=6)
    index_shards(str(data))
    check_has_samples(str(data), "pretrain")
    with pytest.raises(JobError, match="no vqa sample .*caption-only set is a pre-training corpus"):
        check_has_samples(str(data), "finetune")
    split = {"count": 10, "kinds": {"caption": 3, "vqa": 7}}
    assert (epoch_samples(split, None), epoch_samples(split, ("vqa",)), epoch_samples({"count": 4}, ("vqa",))) == (10, 7, 4)


def test_a_set_without_manifest_is_told_to_be_indexed_in_place(tmp_path):
    """`validate` (or any job) on an img2dataset folder names `make_shards.py index` on that folder."""
    data = img2dataset_set(tmp_path / "laion", shards=1, per_shard=3)
    proc = subprocess.run([sys.executable, "jobs/make_shards.py", "validate", str(data)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"python jobs/make_shards.py index {data}" in out, out[-2000:]
    with pytest.raises(ShardError, match="no manifest.json"):
        read_manifest(str(tmp_path / "empty"))
