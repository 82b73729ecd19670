"""Loader throughput: samples per second per CPU core (decode + text perturbation + tokenise + batch).

*Per core* = samples / CPU seconds of the main process plus its DataLoader workers, so the
number does not depend on how many cores are free: on a shared machine wall-clock rates swing
with the neighbours' load, CPU time much less. The reference is plain ``webdataset`` + PIL
decoding of the same shards, the floor any loader pays.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

BENCH_VERSION = 1


def _cpu_seconds() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def make_benchmark_shards(out_dir: str | os.PathLike, *, num_images: int = 1000, image_size: int = 224) -> str:
    """RGB JPEG shards of SynthRad images (real datasets are RGB; SynthRad's grey JPEGs decode
    3x faster and would flatter the loader). Reused when already made with the same settings."""
    from raymmr.data.making import synthrad
    from raymmr.data.making.writer import write_shards
    from raymmr.data.shards import read_manifest

    out = Path(out_dir)
    config = {"benchmark": "loader", "version": BENCH_VERSION, "images": num_images, "image_size": image_size}
    try:
        if read_manifest(out).get("config") == config:
            return str(out)
    except ValueError:
        pass

    def rgb_samples():
        last_gray, last_rgb = None, None
        for s in synthrad.generate_split("train", num_images, image_size=image_size, num_domains=4, test_domain=3, seed=0):
            if s.image is not last_gray:  # the samples of one image share it: convert once
                last_gray, last_rgb = s.image, s.image.convert("RGB")
            s.image = last_rgb
            yield s

    write_shards({"train": rgb_samples()}, out, image_size=image_size, samples_per_shard=500, source="benchmark",
                 config=config, progress=True)
    return str(out)


def _loader_rate(data: str, *, workers: int, samples: int, batch_size: int, max_text_len: int) -> dict:
    from raymmr.config import PerturbationConfig
    from raymmr.data.loader import make_loader
    from raymmr.data.shards import read_manifest, shard_urls
    from raymmr.data.tokenizer import load_tokenizer

    manifest = read_manifest(data)
    loader = make_loader(
        shard_urls(data, "train"), tokenizer=load_tokenizer(data), answers=manifest["answers"],
        max_text_len=max_text_len, batch_size=batch_size, rank=0, world_size=1, epoch_mode="resampled",
        samples_per_epoch=samples, shuffle_buffer=1000, loader_workers=workers, seed=0, epoch=0,
        perturbation=PerturbationConfig(), image_size=manifest["image_size"], manifest=manifest,
    )
    own0, kids0 = _cpu_seconds()
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["key"])
    wall = time.perf_counter() - start
    del batch, loader  # workers exit here, so their CPU time is in RUSAGE_CHILDREN below
    own1, kids1 = _cpu_seconds()
    cpu = (own1 - own0) + (kids1 - kids0)
    return {"workers": workers, "samples": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "samples_per_s": round(n / wall, 1), "samples_per_s_per_core": round(n / cpu, 1)}


def _plain_webdataset_rate(data: str, samples: int) -> dict:
    """Reference: webdataset's own tar reading + PIL decode of every image, nothing else."""
    import itertools

    import webdataset as wds

    from raymmr.data.shards import shard_urls

    urls = shard_urls(data, "train")
    own0, _ = _cpu_seconds()
    start = time.perf_counter()
    n = 0
    for _ in itertools.islice(wds.WebDataset(urls * 100, shardshuffle=False).decode("pil"), samples):
        n += 1
    wall = time.perf_counter() - start
    cpu = _cpu_seconds()[0] - own0
    return {"samples": n, "samples_per_s": round(n / wall, 1), "samples_per_s_per_core": round(n / cpu, 1)}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "raymmr"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def benchmark_loader(data: str | None, *, cache_dir: str, workers=(1, 0), samples: int = 4096, batch_size: int = 64,
                     max_text_len: int = 64, num_images: int = 1000, image_size: int = 224) -> dict:
    """Measure the loader on ``data`` (default: RGB benchmark shards made in ``cache_dir``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per loader process, as in training
    import torch

    torch.set_num_threads(1)
    data = data or make_benchmark_shards(Path(cache_dir) / f"loader-bench-{image_size}", num_images=num_images,
                                         image_size=image_size)
    runs = [_loader_rate(data, workers=w, samples=samples, batch_size=batch_size, max_text_len=max_text_len) for w in workers]
    return {
        "date": _dt.date.today().isoformat(), "machine": machine(), "commit": git_commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "data": data, "batch_size": batch_size,
        "max_text_len": max_text_len, "runs": runs, "plain_webdataset_pil": _plain_webdataset_rate(data, samples),
    }


SECTION = "## Data loader (CPU)"
HEADER = ("| date | machine | commit | command | workers | samples/s/core | samples/s (wall) | notes |\n"
          "|---|---|---|---|---|---|---|---|")


def append_markdown(path: str | os.PathLike, result: dict, command: str) -> None:
    """Add one row per run under '## Data loader (CPU)' in ``path`` (created when missing)."""
    ref = result["plain_webdataset_pil"]["samples_per_s_per_core"]
    notes = (f"224² RGB JPEG, batch {result['batch_size']}, L={result['max_text_len']}; plain webdataset+PIL decode "
             f"{ref:.0f}/core; load avg {result['load_average'][0]} (machine shared with other engineers)")
    rows = [f"| {result['date']} | {result['machine']} | {result['commit']} | `{command}` | {r['workers']} | "
            f"{r['samples_per_s_per_core']:.0f} | {r['samples_per_s']:.0f} | {notes} |" for r in result["runs"]]
    append_table_rows(path, SECTION, HEADER, rows)


def append_table_rows(path: str | os.PathLike, section: str, header: str, rows: list[str], preamble: str = "") -> None:
    """Add ``rows`` to the table under ``section`` in the Markdown file ``path`` (created when
    missing); a missing section is added at the end with ``preamble`` (e.g. a plot) and ``header``."""
    p = Path(path)
    text = p.read_text() if p.exists() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{preamble}{header}\n" + "\n".join(rows) + "\n"
    else:
        head, tail = text.split(section, 1)
        lines = tail.split("\n")
        # the row goes after the last table line of this section (which ends at the next heading)
        end = next((i for i, line in enumerate(lines) if i and line.startswith("## ")), len(lines))
        last = max((i for i, line in enumerate(lines[:end]) if line.startswith("|")), default=None)
        if last is None:
            lines[1:1] = ["", header, *rows]
        else:
            lines[last + 1 : last + 1] = rows
        text = head + section + "\n".join(lines)
    p.write_text(text)
