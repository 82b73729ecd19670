"""Shared fixtures: a small SynthRad shard set made once per session, an embedded Ray."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep every test's caches (SynthRad shards, remote-run staging) out of the user's home.
os.environ.setdefault("RAYMMR_CACHE", str(Path(os.environ.get("PYTEST_CACHE_ROOT", "/tmp")) / f"raymmr-test-cache-{os.getuid()}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``item.rep_call``) for fixtures that clean up."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def remove_ray_node_dirs(request):
    """The cluster tests' node directories (raynodes.node_env) go when their test passes: each
    is a Ray session and a cache of hundreds of MB, and a suite run would leave gigabytes behind.
    A failed test keeps them (its ``<name>.dirs`` file says where)."""
    yield
    import raynodes

    report = getattr(request.node, "rep_call", None)
    if report is None or report.passed:
        raynodes.remove_node_dirs()
    else:
        raynodes.NODE_DIRS.clear()


@pytest.fixture(scope="session")
def tiny_data():
    """SynthRad shards for the `tiny` preset (generated once, reused across sessions)."""
    from raymmr.config import load_config
    from raymmr.data.making.sets import resolve_data

    return resolve_data(load_config("tiny"), None)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the tests that train (2 CPUs, like CI)."""
    import ray

    from raymmr.train.launch import connect_ray

    connect_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


class S3Server:
    """A moto S3 server on 127.0.0.1 with one bucket; ``env`` reaches it from any process."""

    def __init__(self, endpoint: str, bucket: str):
        self.endpoint = endpoint
        self.bucket = bucket
        self.env = {
            "AWS_ENDPOINT_URL": endpoint,  # read by s3fs (fsspec) and pyarrow (Ray Train) alike
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys


@pytest.fixture(scope="session")
def s3_server():
    """An S3 API (moto's server) on 127.0.0.1, started for the session, with the bucket ``raymmr``.
    Its AWS_* variables are set in this process too, so in-process fsspec reaches it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.3)
    server = S3Server(endpoint, "raymmr")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=server.bucket)
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_tiny_data(s3_server, tiny_data):
    """The tiny SynthRad shard set copied into the bucket."""
    from raymmr import storage
    from raymmr.data.shards import MANIFEST

    url = s3_server.url("data", "tiny")
    storage.put(tiny_data, url, last=MANIFEST)
    return url
