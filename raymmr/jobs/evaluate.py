"""Evaluate an exported raymmr model: VQA accuracy (open/closed/overall, per domain, cross-domain,
on the fixed robustness benchmark's seen and unseen perturbations), retrieval R@1/5/10 and mean rank,
the text-only baselines (majority, question only, question-type prior, and with --text-only the same
model fine-tuned on blank images) and the margin over the strongest, each with a 95% image-bootstrap
interval. Writes results.json, results.md and plots into --out.

    python jobs/evaluate.py --model runs/finetune --data ~/.cache/raymmr/synthrad/<id> --split val --out runs/eval

Choose on --split val (role "selection"); evaluate --split test (role "final") once the choices are fixed.
"""

from raymmr.cli import base_parser, config_from_args


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", required=True, help="run directory (uses its export/) or export directory")
    parser.add_argument("--data", help="shard set (default: the SynthRad shards of --config)")
    parser.add_argument("--split", default="test", help="val to make choices on; test once they are fixed")
    parser.add_argument("--text-only", help="the text-only model (fine-tuned with data.blank_images=true) to "
                        "evaluate beside, on blank images: a run directory, export or URL")
    parser.add_argument("--severities", default="light,medium,strong", help="comma list of perturbation severities")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most this many samples (0 = all)")
    parser.add_argument("--card", action="store_true", help="also write the results into the model card (README.md) "
                        "of the evaluated export")
    args = parser.parse_args(argv)
    from raymmr import storage
    from raymmr.data.making.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.eval.evaluate import evaluate
    from raymmr.perturb import SEVERITIES
    from raymmr.rundir import RunDir

    cfg = config_from_args(args)
    severities = [s for s in args.severities.split(",") if s]
    bad = [s for s in severities if s not in SEVERITIES or s == "none"]
    if bad:
        raise JobError(f"--severities: unknown {bad}; choose from {[s for s in SEVERITIES if s != 'none']}")
    export = storage.require_export(args.model, f"--model {args.model}")
    data = resolve_data(cfg, args.data)
    out = RunDir(args.out)
    text_only = None
    if args.text_only:
        text_only = storage.require_export(args.text_only, f"--text-only {args.text_only}")
    results = evaluate(export, data, out.url, split=args.split, severities=severities, blank_export=text_only,
                       batch_size=args.batch_size, limit=args.limit, progress=True, card=args.card)
    print((out.local / "results.md").read_text())
    if args.card:
        print(f"model card: {storage.join(export, 'README.md')}")
    print(f"results: {out.url_of('results.json')}  ({len(results)} keys)")

