"""Benchmark the training step on one device (GPU numbers for BENCHMARKS.md; runs on CPU too).

    python jobs/benchmark.py --config base --stage pretrain --zero-stages 0,1,2,3 --batch-sizes 64,128 \\
        --steps 20 --warmup 5 --baseline plain --out runs/bench --markdown BENCHMARKS.md

Data: --data (a shard set at the preset's image size), else SynthRad shards made for the config.
"""

from raymmr.cli import base_parser, command_line, config_from_args


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, out_default="runs/bench")
    parser.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    parser.add_argument("--zero-stages", default="2", help="comma list of ZeRO stages")
    parser.add_argument("--batch-sizes", default="", help="comma list of micro batch sizes (default train.batch_size)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data")
    parser.add_argument("--markdown", help="append result rows to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--baseline", choices=["plain"],
                        help="plain: also time the same model, task and loader in a plain PyTorch loop (no "
                             "DeepSpeed, no Ray) at each batch size; every row gets its ratio to it")
    args = parser.parse_args(argv)
    import gc

    import torch

    from raymmr.data.making.sets import resolve_data
    from raymmr.train.benchmark import append_markdown, benchmark, with_plain_ratio, write_json

    base = config_from_args(args)
    data = resolve_data(base, args.data)
    rows = []
    sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [base.train.batch_size]
    runs = [(zero, bs) for zero in [int(z) for z in args.zero_stages.split(",")] for bs in sizes]
    if args.baseline:
        runs = [("plain", bs) for bs in sizes] + runs
    for zero, bs in runs:
        cfg = config_from_args(args, extra=[f"train.batch_size={bs}"] + ([] if zero == "plain" else
                                                                          [f"train.zero_stage={zero}"]))
        row = benchmark(cfg, stage=args.stage, data=data, steps=args.steps, warmup=args.warmup, plain=zero == "plain")
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
        gc.collect()  # free this engine's memory before the next configuration
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows = with_plain_ratio(rows)
    path = write_json(rows, args.out)
    if args.markdown:
        append_markdown(rows, args.markdown, command_line())
    print(f"results: {path}")

