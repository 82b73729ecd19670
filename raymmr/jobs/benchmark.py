"""Benchmark the training step on one device (GPU numbers for BENCHMARKS.md; runs on CPU too).

    python jobs/benchmark.py --config base --stage pretrain --zero-stages 0,1,2,3 --batch-sizes 64,128 \\
        --steps 20 --warmup 5 --baseline plain --out runs/bench --markdown BENCHMARKS.md
    python jobs/benchmark.py --config base --configs plain:256,2:256,2:128 ...   # chosen pairs, not a grid

Each configuration's row is written (JSON and markdown) as soon as it is measured, so a run cut
short keeps what it measured. A configuration that fails while running (out of memory, a compile
error) becomes a row naming its error and the others still run; the job then exits non-zero.
Data: --data (a shard set at the preset's image size), else SynthRad shards made for the config.
"""

import traceback

from raymmr.cli import base_parser, command_line, config_from_args
from raymmr.errors import JobError


def parse_configs(spec: str) -> list[tuple[int | str, int]]:
    """``"plain:256,2:256,2:128"`` -> ``[("plain", 256), (2, 256), (2, 128)]`` (ZeRO stage or plain, micro batch)."""
    pairs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        zero, sep, batch = item.partition(":")
        if not sep or not batch.isdigit() or not (zero == "plain" or zero.isdigit()):
            raise JobError(f"--configs: {item!r} is not ZERO:BATCH (e.g. plain:256 or 2:128)")
        pairs.append(("plain" if zero == "plain" else int(zero), int(batch)))
    if not pairs:
        raise JobError("--configs: no configuration given (e.g. --configs plain:256,2:256)")
    return pairs


def grid(zero_stages: str, batch_sizes: list[int], baseline: bool) -> list[tuple[int | str, int]]:
    """The ZeRO stages x batch sizes, after the plain loop at each batch size when ``baseline``."""
    runs = [(int(z), bs) for z in zero_stages.split(",") if z for bs in batch_sizes]
    return ([("plain", bs) for bs in batch_sizes] if baseline else []) + runs


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, out_default="runs/bench")
    parser.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    parser.add_argument("--zero-stages", help="comma list of ZeRO stages (default 2)")
    parser.add_argument("--batch-sizes", help="comma list of micro batch sizes (default train.batch_size)")
    parser.add_argument("--configs", help="ZERO:BATCH pairs to run instead of the grid, in this order; ZERO may be "
                                          "'plain', e.g. plain:256,2:256,2:128")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data")
    parser.add_argument("--markdown", help="append result rows to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--profile", help="after timing each configuration, profile a few more steps and append "
                                          "the ops that took the most device time to this text file (a path or a URL)")
    parser.add_argument("--baseline", choices=["plain"],
                        help="plain: also time the same model, task and loader in a plain PyTorch loop (no "
                             "DeepSpeed, no Ray) at each batch size; every row gets its ratio to it")
    args = parser.parse_args(argv)
    if args.configs and (args.zero_stages or args.batch_sizes or args.baseline):
        raise JobError("--configs names each run: leave out --zero-stages, --batch-sizes and --baseline "
                       "(write plain:BATCH in --configs for the plain loop)")
    import gc

    import torch

    from raymmr.data.making.sets import resolve_data
    from raymmr.train.benchmark import (
        append_markdown,
        append_profile,
        benchmark,
        failed_row,
        json_path,
        with_plain_ratio,
        write_json,
    )

    base = config_from_args(args)
    if args.configs:
        runs = parse_configs(args.configs)
    else:
        sizes = [int(b) for b in (args.batch_sizes or "").split(",") if b] or [base.train.batch_size]
        runs = grid(args.zero_stages or "2", sizes, bool(args.baseline))
    # every configuration is checked before the first one spends device time
    configs = [config_from_args(args, extra=[f"train.batch_size={bs}"] + (
        [] if zero == "plain" else [f"train.zero_stage={zero}"])) for zero, bs in runs]
    data = resolve_data(base, args.data)
    path = json_path(args.out)
    rows, failed = [], []
    for (zero, bs), cfg in zip(runs, configs):
        try:
            row = benchmark(cfg, stage=args.stage, data=data, steps=args.steps, warmup=args.warmup,
                            plain=zero == "plain", profile=bool(args.profile))
        except Exception as e:  # a configuration that cannot run here is a result, not the end of the grid
            traceback.print_exc()
            row = failed_row(cfg, args.stage, zero, e)
            failed.append(f"{zero}:{bs} ({row['error']})")
        table = row.pop("profile", None)
        if table:
            append_profile(args.profile, row, table)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
        with_plain_ratio(rows)
        write_json(rows, path)
        if args.markdown:
            append_markdown([row], args.markdown, command_line())
        gc.collect()  # free this engine's memory before the next configuration
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"results: {path}")
    if failed:
        raise JobError(f"{len(failed)} of {len(runs)} configurations failed (their rows say why): " + "; ".join(failed))
