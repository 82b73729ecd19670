"""Fine-tune raymmr for VQA: builds (or loads) the similar-image index from the pre-trained model,
then trains difference reconstruction + head mixup (CMDPI §3.3) with Ray Train + DeepSpeed.

    python jobs/finetune.py --config tiny --init runs/pretrain --out runs/finetune
"""

from raymmr.cli import CLUSTER_FLAGS, add_training_args, base_parser, config_from_args


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    add_training_args(parser)
    parser.add_argument("--init", help="pre-training run dir or export dir to start from (default: random init)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, {**CLUSTER_FLAGS, "steps": "finetune.steps"})
    from raymmr.train.launch import run_training

    result = run_training(cfg, stage="finetune", out=args.out, data=args.data, resume=args.resume,
                          init_from=args.init, num_workers=args.num_workers, address=args.address)
    print(f"fine-tuning done: run {result.run_dir}, export {result.export_dir}")

