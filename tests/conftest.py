"""Shared fixtures: a small SynthRad shard set made once per session, an embedded Ray."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep every test's caches (SynthRad shards, remote-run staging) out of the user's home.
os.environ.setdefault("RAYMMR_CACHE", str(Path(os.environ.get("PYTEST_CACHE_ROOT", "/tmp")) / f"raymmr-test-cache-{os.getuid()}"))


@pytest.fixture(scope="session")
def tiny_data():
    """SynthRad shards for the `tiny` preset (generated once, reused across sessions)."""
    from raymmr.config import load_config
    from raymmr.train.launch import resolve_data

    return resolve_data(load_config("tiny"), None)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the tests that train (2 CPUs, like CI)."""
    import ray

    from raymmr.train.launch import connect_ray

    connect_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()
