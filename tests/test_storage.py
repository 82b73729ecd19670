"""The storage layer on fsspec's in-memory filesystem (a remote URL with no server) and on local
paths: copies keyed by content, exports found in run directories, checkpoints read from the URL."""

import json
import uuid

import pytest

from raymmr import storage
from raymmr.errors import JobError
from raymmr.rundir import RunDir
from raymmr.train import checkpoint as ckpt
from raymmr.train.launch import check_run_dir


@pytest.fixture
def url():
    return f"memory://raymmr-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMMR_CACHE", str(tmp_path / "cache"))


def test_paths_and_urls():
    assert storage.is_remote("s3://b/x") and storage.is_remote("gs://b") and storage.is_remote("memory://x")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("runs/x") and not storage.is_remote("file:///x")
    assert storage.normalize("s3://b/run/") == "s3://b/run"
    assert storage.normalize("file:///tmp/a/../b") == "/tmp/b"
    assert storage.join("s3://b/run", "export", "model.safetensors") == "s3://b/run/export/model.safetensors"


def test_write_read_names(url):
    storage.write_text(f"{url}/a/x.txt", "hello")
    storage.write_bytes(f"{url}/a/y.bin", b"\x00\x01")
    assert storage.read_text(f"{url}/a/x.txt") == "hello"
    assert storage.names(f"{url}/a") == ["x.txt", "y.bin"]
    assert storage.names(f"{url}/missing") == []
    assert storage.exists(f"{url}/a/x.txt") and not storage.exists(f"{url}/a/z")


def test_cached_copy_follows_changes(url, tmp_path):
    storage.write_text(f"{url}/exp/model.safetensors", "v1")
    storage.write_text(f"{url}/exp/config.yaml", "c")
    first = storage.cached_copy(f"{url}/exp", "exports")
    assert (first / "model.safetensors").read_text() == "v1" and (first / "config.yaml").read_text() == "c"
    assert str(first).startswith(str(tmp_path / "cache"))
    assert storage.cached_copy(f"{url}/exp", "exports") == first  # unchanged: the same copy
    storage.write_text(f"{url}/exp/model.safetensors", "v2 longer")
    second = storage.cached_copy(f"{url}/exp", "exports")
    assert second != first and (second / "model.safetensors").read_text() == "v2 longer"
    assert (first / "model.safetensors").read_text() == "v1"  # a reader of the old copy is not disturbed
    with pytest.raises(FileNotFoundError):
        storage.cached_copy(f"{url}/nothing", "exports")
    local = tmp_path / "here"
    local.mkdir()
    assert storage.cached_copy(str(local), "exports") == local


def test_find_export_in_run_or_export_dir(url, tmp_path):
    storage.write_text(f"{url}/run/export/model.safetensors", "w")
    assert storage.find_export(f"{url}/run") == f"{url}/run/export"
    assert storage.find_export(f"{url}/run/export/") == f"{url}/run/export"
    assert storage.find_export(f"{url}/other") is None
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "model.safetensors").write_text("w")
    assert storage.find_export(str(tmp_path)) is None
    assert storage.find_export(str(tmp_path / "exp")) == str(tmp_path / "exp")


def write_checkpoint(base: str, launch: str, step: int, world: int, ranks_done: int) -> str:
    c = f"{base}/{launch}/step_{step:07d}"
    storage.write_text(f"{c}/{ckpt.META}", json.dumps({"step": step, "world_size": world, "zero_stage": 2,
                                                       "stage": "pretrain"}))
    storage.write_text(f"{c}/{ckpt.TAG}/mp_rank_00_model_states.pt", "x")
    listed = {ckpt.META: len(storage.read_bytes(f"{c}/{ckpt.META}")), f"{ckpt.TAG}/mp_rank_00_model_states.pt": 1}
    for r in range(ranks_done):
        storage.write_text(f"{c}/rank-{r}.done", json.dumps({"step": step, "files": listed if r == 0 else {"x": 1}}))
        if r:
            storage.write_text(f"{c}/x", "x")
    return c


def test_latest_complete_checkpoint_read_from_the_url(url):
    assert ckpt.latest_complete(url) is None
    write_checkpoint(url, "ray-20261202-100000", 4, 2, 2)
    newest = write_checkpoint(url, "ray-20261202-110000-resume", 8, 2, 2)
    write_checkpoint(url, "ray-20261202-110000-resume", 12, 2, 1)  # rank 1 never finished writing
    assert len(ckpt.checkpoints(url)) == 3
    assert ckpt.latest_complete(url) == newest
    assert not ckpt.is_complete(f"{url}/ray-20261202-110000-resume/step_0000012")
    storage.write_text(f"{newest}/{ckpt.TAG}/mp_rank_00_model_states.pt", "")  # a file not as its marker lists it
    assert ckpt.latest_complete(url).endswith("ray-20261202-100000/step_0000004")


def test_run_dir_guards_read_the_url(url):
    run = RunDir(f"{url}/run")
    assert run.local.is_dir() and run.remote
    check_run_dir(run, resume=False)  # nothing there
    with pytest.raises(JobError, match="no checkpoint"):
        check_run_dir(run, resume=True)
    run.write_text("config.yaml", "a: 1")  # a launch that failed before training
    assert storage.read_text(f"{url}/run/config.yaml") == "a: 1"
    check_run_dir(run, resume=False)  # may start over
    write_checkpoint(run.url, "ray-x", 2, 1, 1)
    # A second machine (its own empty staging dir) sees the run through the URL.
    other = RunDir(f"{url}/run")
    with pytest.raises(JobError, match="already holds a run"):
        check_run_dir(other, resume=False)
    check_run_dir(other, resume=True)


def test_append_lines_continues_the_urls_log(url, tmp_path, monkeypatch):
    RunDir(f"{url}/run").append_lines("events.jsonl", ["a"])
    monkeypatch.setenv("RAYMMR_CACHE", str(tmp_path / "another-machine"))
    RunDir(f"{url}/run").append_lines("events.jsonl", ["b"])
    assert storage.read_text(f"{url}/run/events.jsonl") == "a\nb\n"


def test_processes_fetching_one_remote_tokenizer_at_once_all_get_it(s3_server, monkeypatch):
    """Ray workers starting together on one node each copy a remote shard set's tokenizer into the
    node's cache; every one must get the whole file (one fixed temp name made all but the first fail)."""
    import threading

    from raymmr.data import shards

    text, url = '{"model": "a tokenizer"}', s3_server.url("tokenizer-race")
    storage.write_text(f"{url}/data/tokenizer.json", text)
    opened = threading.Barrier(4)
    real_open = shards.open_url

    def open_together(u):  # every fetch is inside the copy before any one finishes it
        f = real_open(u)
        opened.wait(timeout=30)
        return f

    monkeypatch.setattr(shards, "open_url", open_together)
    got, errors = [], []

    def fetch():
        try:
            got.append(open(shards.shard_tokenizer(f"{url}/data")).read())
        except Exception as e:  # noqa: BLE001 -- collected and shown by the assertion below
            errors.append(repr(e))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and got == [text] * 4, errors
