"""The storage layer on fsspec's in-memory filesystem (a remote URL with no server) and on local
paths: copies keyed by content, exports found in run directories, checkpoints read from the URL."""

import json
import uuid
from pathlib import Path

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


def test_one_command_starts_a_run_and_continues_it_reading_the_url(url, capsys):
    """Whether a launch continues is read from the run's URL: nothing there (or a launch that failed
    before its first checkpoint) starts; a checkpoint there continues, with or without --resume,
    from any machine."""
    run = RunDir(f"{url}/run")
    assert run.local.is_dir() and run.remote
    assert check_run_dir(run) is False  # nothing there
    assert check_run_dir(run, resume=True) is False  # a first launch with --resume starts, and says so
    assert "no checkpoint there yet, so the run starts" in capsys.readouterr().out
    run.write_text("config.yaml", "a: 1")  # a launch that failed before training
    assert storage.read_text(f"{url}/run/config.yaml") == "a: 1"
    assert check_run_dir(run) is False  # starts over
    write_checkpoint(run.url, "ray-x", 2, 1, 1)
    # A second machine (its own empty staging dir) sees the run through the URL.
    other = RunDir(f"{url}/run")
    assert check_run_dir(other) is True and check_run_dir(other, resume=True) is True


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
    together = threading.Barrier(4)
    real_fingerprint = storage.fingerprint

    def fingerprint_together(u):  # every fetch has found the cache empty before any one fills it
        found = real_fingerprint(u)
        together.wait(timeout=30)
        return found

    monkeypatch.setattr(storage, "fingerprint", fingerprint_together)
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


def test_a_checkpoints_random_states_continue_the_stream(url, tmp_path):
    """What a rank saves beside its checkpoint part (JSON, no pickle) brings back the torch, numpy and
    Python streams where they were; another world size or an older checkpoint keeps the fresh seed."""
    import random

    import numpy as np
    import torch

    part = tmp_path / "part"
    part.mkdir()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    torch.rand(3), np.random.rand(2), random.random()  # somewhere mid-stream
    ckpt.save_rng(part, rank=1)
    want = (torch.rand(4), np.random.rand(3), [random.random() for _ in range(2)])
    storage.put(part / ckpt.RNG_STATE.format(rank=1), storage.join(url, "ckpt", ckpt.RNG_STATE.format(rank=1)))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # a restarted worker's fresh seed
    assert not ckpt.restore_rng(storage.join(url, "ckpt"), rank=1, same_world=False)
    assert not ckpt.restore_rng(storage.join(url, "ckpt"), rank=0, same_world=True)  # none saved for rank 0
    assert not torch.equal(torch.rand(4), want[0])
    assert ckpt.restore_rng(storage.join(url, "ckpt"), rank=1, same_world=True)
    got = (torch.rand(4), np.random.rand(3), [random.random() for _ in range(2)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    assert json.loads((part / ckpt.RNG_STATE.format(rank=1)).read_text())["torch"]  # plain JSON


def test_resume_refuses_a_config_or_data_that_changes_the_run(url, tiny_data, tmp_path):
    """The run remembers its config and its shard set's fingerprint; `--resume` may lengthen it and
    move it (steps, workers, logging), never change what it trains on or how."""
    import shutil

    from raymmr.config import load_config, to_yaml
    from raymmr.train.launch import RUN_DATA, check_resume_matches, data_fingerprint

    run = RunDir(storage.join(url, "run"))
    cfg = load_config("tiny")
    run.write_text("config.yaml", to_yaml(cfg))
    run.write_text(RUN_DATA, json.dumps({"data": tiny_data, "fingerprint": data_fingerprint(tiny_data)}))
    check_resume_matches(run, load_config("tiny", ["train.steps=900", "train.num_workers=2:4",
                                                   "train.checkpoint_every=7"]), tiny_data)
    with pytest.raises(JobError) as e:
        check_resume_matches(run, load_config("tiny", ["train.batch_size=16", "train.seed=3", "train.steps=900"]),
                             tiny_data)
    assert "train.batch_size: 32 -> 16" in str(e.value) and "train.seed: 0 -> 3" in str(e.value)
    assert "train.steps" not in str(e.value).split("A resume may change")[0]
    moved = tmp_path / "moved"  # the same shard set elsewhere (another machine's cache): accepted
    shutil.copytree(tiny_data, moved)
    check_resume_matches(run, cfg, str(moved))
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["splits"]["train"]["count"] += 1  # another shard set
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JobError, match="is not the shard set the run trained on"):
        check_resume_matches(run, cfg, str(moved))


class FakeTrainer:
    """A Ray Train fit that writes a checkpoint at each step in ``steps`` (None: none) and then
    fails with ``error`` (None: succeeds)."""

    def __init__(self, run_url: str, launch: str, steps, error):
        self.run_url, self.launch, self.steps, self.error = run_url, launch, steps, error

    def fit(self):
        from types import SimpleNamespace

        for step in self.steps or ():
            write_checkpoint(self.run_url, self.launch, step, 1, 1)
        if self.error is not None:
            raise self.error
        return SimpleNamespace(error=None, metrics={"step": max(self.steps or [0])})


def test_a_run_that_progresses_outlives_any_number_of_failures_and_a_stalled_one_stops(url):
    """``fit_until_done``: every failure after a new checkpoint is retried at once, from that
    checkpoint, under a fresh launch name; failures in a row without one wait longer each time and
    stop after train.max_failures; a deterministic error (the input's fault) stops at once."""
    import dataclasses

    from raymmr.config import ConfigError
    from raymmr.train.launch import RETRY_WAIT_S, fit_until_done

    Job = dataclasses.make_dataclass("Job", ["stage", "launch", "resume_from"])  # what it reads of a TrainJob

    run = RunDir(storage.join(url, "run"))
    preempted = RuntimeError("node lost")

    def play(script, max_stalled):
        """Fit attempts as scripted [(checkpoint steps, error)]; returns (result or error, jobs seen, waits)."""
        jobs, waits, plan = [], [], iter(script)

        def trainer_for(job):
            jobs.append(job)
            steps, error = next(plan)
            return FakeTrainer(run.url, job.launch, steps, error)

        job = Job(stage="pretrain", launch="ray-first", resume_from=None)
        try:
            out = fit_until_done(trainer_for, job, run, max_stalled=max_stalled, sleep=waits.append)
        except Exception as e:  # noqa: BLE001
            out = e
        return out, jobs, waits

    # Ten failures, each after progress, with max_failures=1: the run finishes.
    script = [([2 * i + 1, 2 * i + 2], preempted) for i in range(10)] + [([21, 22], None)]
    out, jobs, waits = play(script, max_stalled=1)
    assert out.metrics == {"step": 22} and len(jobs) == 11 and waits == [0] * 10
    assert len({j.launch for j in jobs}) == 11  # a fresh Ray Train run name per attempt
    assert jobs[-1].resume_from.endswith("step_0000020")  # from the newest complete checkpoint
    retries = [json.loads(x) for x in storage.read_text(run.url_of("events.jsonl")).splitlines()]
    assert [r["checkpoint_step"] for r in retries if r["event"] == "retry"] == list(range(2, 21, 2))

    # No checkpoint between failures: retried max_failures times, each wait longer, then raised.
    run = RunDir(storage.join(url, "stuck"))
    out, jobs, waits = play([([1], preempted), (None, preempted), (None, preempted), (None, preempted)], max_stalled=2)
    assert out is preempted and len(jobs) == 4 and waits == [0, RETRY_WAIT_S[1], RETRY_WAIT_S[2]]
    assert 0 < RETRY_WAIT_S[1] < RETRY_WAIT_S[2]

    # A deterministic error on a worker (wrapped as Ray wraps it) stops at its first occurrence.
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    run = RunDir(storage.join(url, "bad"))
    bad = WorkerGroupError("rank 1 raised", {0: UserExceptionWithTraceback(RuntimeError("gloo: connection reset"), "tb"),
                                             1: UserExceptionWithTraceback(ConfigError("bad key"), "tb")})
    out, jobs, waits = play([(None, bad), (None, None)], max_stalled=5)
    assert out is bad and len(jobs) == 1 and waits == []


def test_synthrad_generated_here_is_recognised_for_upload(tiny_data, tmp_path, monkeypatch):
    """Shards generated into this machine's cache are a path no other node has: sweeps, ablations
    and training jobs on a cluster upload them (``share_generated_data``); a shard set the user
    named, local or remote, is left where it is."""
    import shutil

    from raymmr.train.launch import generated_here, share_generated_data

    monkeypatch.setenv("RAYMMR_CACHE", str(Path(tiny_data).parents[1]))  # the cache that generated it
    assert generated_here(tiny_data)
    copy = tmp_path / "mine"
    shutil.copytree(tiny_data, copy)
    assert not generated_here(str(copy)) and not generated_here("s3://bucket/shards/synthrad/abc")
    bucket = f"memory://raymmr-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RAYMMR_STORAGE", bucket)
    shared = share_generated_data(tiny_data, str(tmp_path / "run"))
    assert shared == f"{bucket}/shards/synthrad/{Path(tiny_data).name}"
    assert share_generated_data(str(copy), str(tmp_path / "run")) == str(copy)  # the user's own: left alone
    assert storage.exists(f"{shared}/manifest.json")


def test_a_config_and_a_benchmark_in_a_bucket(url):
    """`--config s3://.../best_config.yaml` (what a sweep writes there) loads; a benchmark's `--out`
    URL receives its JSON (not a local folder named after the URL)."""
    from raymmr.config import ConfigError, load_config, to_yaml
    from raymmr.train.benchmark import append_profile, json_path, write_json

    cfg = load_config("tiny", ["loss.w_img=0.5", "train.num_workers=2:4"])
    storage.write_text(f"{url}/sweep/best_config.yaml", to_yaml(cfg))
    assert load_config(f"{url}/sweep/best_config.yaml") == cfg
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(f"{url}/sweep/none.yaml")
    where = json_path(f"{url}/bench")
    write_json([{"samples_per_s": 1.0}], where)
    assert where.startswith(f"{url}/bench/benchmark-") and json.loads(storage.read_text(where)) == [{"samples_per_s": 1.0}]
    row = {"stage": "pretrain", "preset": "tiny", "zero_stage": 2, "batch_size": 4, "device": "cpu"}
    for table in ("first table", "second table"):  # --profile s3://...: each configuration appended
        append_profile(f"{url}/bench/profile.txt", row, table)
    profile = storage.read_text(f"{url}/bench/profile.txt")
    assert profile.count("== pretrain tiny: ZeRO 2, batch 4") == 2 and profile.index("first") < profile.index("second")


def test_one_download_per_node_and_a_cache_pruned_to_its_budget(url, tmp_path, monkeypatch):
    """Ranks on one node fetching the same checkpoint at once download it once (a lock beside the
    copy); the copies of a kind are pruned, least recently used first, to RAYMMR_CACHE_GB, sparing
    copies used within the last hour."""
    import os
    import threading
    import time

    storage.write_text(f"{url}/ckpt/part.bin", "x" * 1000)
    calls = []
    real_get = storage.get

    def slow_get(src, dst):
        calls.append(src)
        time.sleep(0.3)
        real_get(src, dst)

    monkeypatch.setattr(storage, "get", slow_get)
    got = []
    threads = [threading.Thread(target=lambda: got.append(storage.cached_copy(f"{url}/ckpt", "checkpoints")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(got)) == 1 and (got[0] / "part.bin").read_text() == "x" * 1000

    root = storage.cache_dir() / "old-kind"
    for i, age_h in enumerate((50, 40, 30, 0.1)):  # 4 copies of 1 kB, the last used 6 minutes ago
        entry = root / f"copy{i}"
        entry.mkdir(parents=True)
        (entry / "f").write_bytes(b"y" * 1000)
        stamp = time.time() - age_h * 3600
        os.utime(entry, (stamp, stamp))
    deleted = storage.prune_cache("old-kind", budget_bytes=1500)
    assert [p.name for p in deleted] == ["copy0", "copy1", "copy2"]  # oldest first; the recent one stays
    assert sorted(p.name for p in root.iterdir()) == ["copy3"]


def test_a_run_directory_in_a_store_ray_cannot_persist_to_is_refused():
    """Ray Train persists checkpoints through pyarrow: local, s3 and gs only; anything else is
    refused before anything starts, naming the schemes that work."""
    for ok in ("/tmp/runs/x", "file:///tmp/runs/x", "s3://bucket/runs/x", "gs://bucket/runs/x"):
        storage.check_run_url(ok)
    for bad in ("memory://runs/x", "az://container/runs/x", "hdfs://nn/runs/x"):
        with pytest.raises(JobError, match="a local path, s3://... or gs://"):
            storage.check_run_url(bad)


def test_a_tokenizer_rewritten_at_the_same_url_is_fetched_anew(url):
    """The remote tokenizer's cache is keyed by what is at the URL, not by the URL alone: a shard
    set rewritten in place (a new tokenizer) is not read through a stale copy."""
    from raymmr.data.shards import shard_tokenizer

    storage.write_text(f"{url}/set/manifest.json", "{}")
    storage.write_text(f"{url}/set/tokenizer.json", '{"version": 1}')
    first = shard_tokenizer(f"{url}/set")
    assert json.loads(Path(first).read_text()) == {"version": 1}
    storage.write_text(f"{url}/set/tokenizer.json", '{"version": 2, "rewritten": true}')
    second = shard_tokenizer(f"{url}/set")
    assert json.loads(Path(second).read_text()) == {"version": 2, "rewritten": True} and second != first


@pytest.fixture
def fake_gcs(monkeypatch):
    """gs:// served by an in-memory fsspec filesystem under the gs protocol (what gcsfs provides):
    raymmr's own storage and shard reading go through fsspec, so they take it as they take gcsfs."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}  # a store of its own, not memory://'s
        pseudo_dirs = [""]

    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    yield f"gs://raymmr-test-{uuid.uuid4().hex[:8]}"
    FakeGCS.store.clear()
    from fsspec.registry import _registry

    for protocol in ("gs", "gcs"):  # back to gcsfs (or its absence) for the other tests
        _registry.pop(protocol, None)


def test_gs_urls_for_data_runs_and_exports(fake_gcs, tiny_data, tmp_path):
    """A shard set, a run directory's files and an export in gs://: the manifest, tokenizer and
    samples read back (the loader's reader), a run's config and logs land there, an export is found
    there. (Ray Train's own checkpoint persistence goes through pyarrow's GCS filesystem, which this
    fake does not replace.)"""
    from raymmr.data.shards import read_manifest, shard_tokenizer, shard_urls
    from raymmr.data.tario import Problems, read_tar

    storage.put(tiny_data, f"{fake_gcs}/shards")
    manifest = read_manifest(f"{fake_gcs}/shards")
    assert manifest == read_manifest(tiny_data)
    urls = shard_urls(f"{fake_gcs}/shards", "val")
    assert urls and all(u.startswith(f"{fake_gcs}/shards/") for u in urls)
    local = [s["__key__"] for s in read_tar(shard_urls(tiny_data, "val")[0], Problems())]
    assert [s["__key__"] for s in read_tar(urls[0], Problems())] == local
    assert Path(shard_tokenizer(f"{fake_gcs}/shards")).read_bytes() == (Path(tiny_data) / "tokenizer.json").read_bytes()
    run = RunDir(f"{fake_gcs}/runs/pt")
    run.write_text("config.yaml", "preset: tiny\n")
    run.append_lines("events.jsonl", ['{"event": "x"}'])
    assert storage.read_text(f"{fake_gcs}/runs/pt/config.yaml") == "preset: tiny\n"
    storage.write_text(f"{fake_gcs}/runs/pt/export/{storage.WEIGHTS}", "w")
    assert storage.find_export(f"{fake_gcs}/runs/pt") == f"{fake_gcs}/runs/pt/export"
    storage.check_run_url(f"{fake_gcs}/runs/pt")


def test_a_similar_image_index_built_from_other_weights_is_rebuilt(url, tmp_path):
    """The index records what built it (the pre-trained weights' fingerprint, the shards, the image
    reading); a run continued with another --init export, or an index from before this record,
    is not reused."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from raymmr.train.partners import INDEX, index_fingerprint, saved_index

    export = f"{url}/pt/export"
    storage.write_text(f"{export}/{storage.WEIGHTS}", "weights v1")
    job = SimpleNamespace(init_from=export)
    args = {"image_size": 64, "blank_images": False}
    built = index_fingerprint(job, ["a.tar"], args)
    run = RunDir(f"{url}/ft")
    assert not saved_index(run, built)  # none yet
    save_file({"embeddings": torch.zeros(1, 2)}, str(tmp_path / INDEX), metadata={"keys": "[]", "built_from": built})
    storage.put(tmp_path / INDEX, run.url_of(INDEX))
    assert saved_index(run, built)
    assert index_fingerprint(job, ["a.tar", "b.tar"], args) != built
    assert index_fingerprint(job, ["a.tar"], {**args, "blank_images": True}) != built
    storage.write_text(f"{export}/{storage.WEIGHTS}", "weights v2, retrained")
    assert not saved_index(run, index_fingerprint(job, ["a.tar"], args))


# --- one module reads URL schemes -----------------------------------------------------------------

# Who may read a URL's scheme besides raymmr.storage, and why. Everyone else asks storage
# (``scheme``, ``is_remote``, ``join``, ``open_url`` ...), so a new backend is added in one place.
SCHEME_READERS = {
    "raymmr.storage": "the storage layer",
    "raymmr.train.tracking": "MLflow tracking URIs (sqlite:, databricks, a password in http://), not storage",
}
SCHEME_PARSERS = {"urlparse", "urlsplit", "url_to_fs", "get_filesystem_class", "infer_storage_options"}
SCHEME_PREFIXES = ("s3:", "gs:", "gcs:", "file:", "pipe:", "http:", "https:", "memory:", "sqlite:")


def reads_a_scheme(node) -> bool:
    """Whether an AST node takes a URL's scheme apart: ``"://" in x``, ``x.split("://")``,
    ``x.startswith("s3://")``, ``urlparse(x)``, ``fsspec.core.url_to_fs(x)`` ..."""
    import ast

    def scheme_text(value) -> bool:
        texts = value.elts if isinstance(value, ast.Tuple) else [value]
        return any(isinstance(t, ast.Constant) and isinstance(t.value, str)
                   and ("://" in t.value or t.value.startswith(SCHEME_PREFIXES)) for t in texts)  # fmt: skip

    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return isinstance(node.left, ast.Constant) and node.left.value == "://"
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in SCHEME_PARSERS:
            return True
        if name in ("startswith", "split", "partition", "removeprefix") and node.args:
            return scheme_text(node.args[0])
    return False


def scheme_readers(sources: dict[str, str]) -> dict[str, int]:
    """Module -> how many places in it read a URL's scheme."""
    import ast

    found = {}
    for module, source in sources.items():
        count = sum(reads_a_scheme(node) for node in ast.walk(ast.parse(source)))
        if count:
            found[module] = count
    return found


def tree_sources() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    files = [*sorted((root / "raymmr").rglob("*.py")), *sorted((root / "jobs").glob("*.py"))]
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p.read_text() for p in files}


def test_only_the_storage_layer_reads_url_schemes():
    sources = tree_sources()
    assert len(sources) > 60 and "raymmr.storage" in sources
    readers = scheme_readers(sources)
    assert "raymmr.storage" in readers  # the scan sees the one that does
    assert set(readers) <= set(SCHEME_READERS), {m: n for m, n in readers.items() if m not in SCHEME_READERS}


@pytest.mark.parametrize("source", [
    'if "://" in url:\n    pass\n',
    'kind = url.split("://", 1)[0]\n',
    'local = url.startswith(("s3://", "gs://"))\n',
    'piped = data.startswith("pipe:")\n',
    'from urllib.parse import urlparse\nurlparse(url).scheme\n',
    'import fsspec\nfs, path = fsspec.core.url_to_fs(url)\n',
])  # fmt: skip
def test_the_scheme_check_catches_a_module_that_reads_one(source):
    assert scheme_readers({"raymmr.data.shards": source}) == {"raymmr.data.shards": 1}
    assert scheme_readers({"raymmr.data.shards": 'storage.is_remote(url)\nstorage.join(url, "x")\n'}) == {}


def test_a_cache_key_is_one_digest_under_its_kind(tmp_path):
    a = storage.cache_path("runs", "s3://b/run")
    assert a.parent == tmp_path / "cache" / "runs" and len(a.name) == 16
    assert a == storage.cache_path("runs", "s3://b/run") != storage.cache_path("runs", "s3://b/other")
    assert storage.cache_path("runs", "a", "b") != storage.cache_path("runs", "a|b", "")


def test_a_piped_file_is_copied_once_into_the_cache(tmp_path):
    source = tmp_path / "tokenizer.json"
    source.write_text("{}")
    copy = storage.cached_copy(f"pipe:cat {source}", "tokenizers", name="tokenizer.json")
    assert copy.name == "tokenizer.json" and copy.read_text() == "{}"
    source.write_text('{"changed": 1}')  # a command has no version to compare: the copy stays
    assert storage.cached_copy(f"pipe:cat {source}", "tokenizers", name="tokenizer.json") == copy
