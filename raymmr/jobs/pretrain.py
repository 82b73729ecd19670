"""Pre-train raymmr (CMDPI reconstruction + contrastive, Robust-MMR terms) with Ray Train + DeepSpeed.

    python jobs/pretrain.py --config tiny --out runs/pretrain
    ray job submit --working-dir . -- python jobs/pretrain.py --config base --num-workers 16 \\
        --gpus-per-worker 1 --data s3://bucket/shards --out s3://bucket/runs/pt1
"""

from raymmr.cli import CLUSTER_FLAGS, add_training_args, base_parser, config_from_args


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    add_training_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, {**CLUSTER_FLAGS, "steps": "train.steps"})
    from raymmr.train.launch import run_training

    result = run_training(cfg, stage="pretrain", out=args.out, data=args.data, resume=args.resume,
                          num_workers=args.num_workers, address=args.address)
    print(f"pre-training done: run {result.run_dir}, export {result.export_dir}")

