"""The whole pipeline on the embedded default — local Ray, CPU, `tiny` preset, SynthRad data:
make shards -> pre-train -> fine-tune (the model, and the same pre-training on blank images: the
text-only baseline) -> evaluate on the validation split, where every choice of the preset was
made, then once on the test split; prints both results tables, baselines and intervals beside
each number. `make demo` runs this.

    python jobs/demo.py --out runs/demo [--set train.steps=100 ...]
"""

from raymmr.cli import base_parser, config_from_args


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, out_default="runs/demo")
    parser.add_argument("--num-workers", default=None, help="Ray Train workers (default train.num_workers)")
    args = parser.parse_args(argv)
    import time

    from raymmr import storage
    from raymmr.data.making.sets import resolve_data
    from raymmr.pipeline import run_pipeline

    cfg = config_from_args(args)
    out = storage.join(storage.normalize(args.out), time.strftime("%Y%m%d-%H%M%S"))  # a path or a URL
    t0 = time.time()
    print(f"[demo] SynthRad shards ({cfg.data.synthrad_train} train images)", flush=True)
    data = resolve_data(cfg, None)
    print(f"[demo] shards: {data}", flush=True)
    # The preset's choices are fixed (made on validation), so the test split is evaluated, once.
    run_pipeline(cfg, out, data, num_workers=args.num_workers, final_test=True, log=lambda m: print(m, flush=True))
    for split in ("val", "test"):
        print()
        print(storage.read_text(storage.join(out, "eval", split, "results.md")))
    print(f"[demo] done in {time.time() - t0:.0f} s; everything is under {out}")

