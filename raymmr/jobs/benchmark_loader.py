"""Measure data-loader throughput in samples/s per CPU core; append a row to BENCHMARKS.md.

    python jobs/benchmark_loader.py                       # 224² RGB JPEG shards made once in the cache
    python jobs/benchmark_loader.py --data /data/shards --workers 1,0 --samples 8192

Per core = samples / CPU seconds of the main process and its DataLoader workers (decode, text
perturbation, tokenisation, batching): robust to other jobs sharing the machine.
"""

import argparse
import json
import sys

from raymmr.cli import command_line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="shard set directory (default: benchmark shards made in the cache)")
    p.add_argument("--workers", default="1,0", help="comma list of loader_workers values (default 1,0)")
    p.add_argument("--samples", type=int, default=4096, help="samples per measurement")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-text-len", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224, help="size of the generated benchmark shards")
    p.add_argument("--json", default="runs/benchmark_loader.json", help="where to write the result")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="append rows here ('' to skip)")
    args = p.parse_args(argv)
    from raymmr import storage
    from raymmr.data.benchmark import append_markdown, benchmark_loader
    from raymmr.storage import cache_dir

    cache = str(cache_dir())
    try:
        result = benchmark_loader(args.data, cache_dir=cache, workers=[int(w) for w in args.workers.split(",")],
                                  samples=args.samples, batch_size=args.batch_size, max_text_len=args.max_text_len,
                                  image_size=args.image_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in result["runs"]:
        print(f"loader_workers={r['workers']}: {r['samples_per_s_per_core']:.0f} samples/s/core, "
              f"{r['samples_per_s']:.0f} samples/s wall ({r['samples']} samples, {r['cpu_s']} CPU s)")
    ref = result["plain_webdataset_pil"]
    print(f"plain webdataset + PIL decode: {ref['samples_per_s_per_core']:.0f} samples/s/core (reference)")
    storage.write_text(storage.normalize(args.json), json.dumps(result, indent=1) + "\n")  # a path or a URL
    if args.markdown:
        append_markdown(args.markdown, result, command_line())
        print(f"appended to {args.markdown}; JSON in {args.json}")
    return 0

