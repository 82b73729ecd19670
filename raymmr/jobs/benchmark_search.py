"""How efficiently does a raymmr sweep search? A full grid, random search + ASHA and Optuna TPE +
ASHA on one fine-tuning space from one shared pre-training, the same accounting (fine-tuning
steps), each search's choice confirmed on the whole validation split against the grid's
(raymmr.tune.efficiency); appends rows to BENCHMARKS.md and draws the plot.

    python jobs/benchmark_search.py                  # tiny, search_spaces/efficiency_grid.yaml, 5 samples
    python jobs/benchmark_search.py --samples 4 --out runs/efficiency --plot BENCHMARKS_search.png
"""

import datetime
import os
import platform
import shutil
import subprocess
from pathlib import Path

from raymmr.cli import base_parser, command_line, config_from_args
from raymmr.data.benchmark import append_table_rows
from raymmr.tune.efficiency import cells


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, out_default="runs/efficiency")
    parser.add_argument("--space", default="efficiency_grid", help="a grid space over fine-tuning settings")
    parser.add_argument("--samples", type=int, default=5, help="trials of random search and of TPE (default 5)")
    parser.add_argument("--data", help="shard set (default: SynthRad for the config)")
    parser.add_argument("--markdown", default="BENCHMARKS.md", help="append rows here ('' to skip)")
    parser.add_argument("--plot", default="benchmarks/search_efficiency.png", help="copy the plot here")
    args = parser.parse_args(argv)

    from raymmr import storage
    from raymmr.data.making.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.tune.efficiency import run_efficiency
    from raymmr.tune.space import load_space

    if storage.is_remote(args.out):
        raise JobError(f"--out {args.out}: the benchmark writes a local directory (its plot and rows go to this checkout)")
    space = load_space(args.space)
    cfg = config_from_args(args, extra=["tune.objective=finetune"], method=args.method or space.method)
    data = resolve_data(cfg, args.data)
    report = run_efficiency(cfg, space.path, args.out, data, samples=args.samples)
    table = (Path(args.out) / "efficiency.md").read_text()
    print(table)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.out) / "efficiency.png", args.plot)
    if args.markdown:
        append_rows(args.markdown, report, command_line(), args.plot)


SECTION = "## Search efficiency"
HEADER = ("| date | machine | commit | command | search | trials | fine-tuning steps | of the grid's | "
          "choice: validation accuracy | − the grid's choice (points) | goal met |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def append_rows(path: str, report: dict, command: str, plot: str) -> None:
    """One row per search under ``SECTION`` of ``path`` (the section and its plot link made once)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = datetime.date.today().isoformat()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for name, s in report["searches"].items():
        c = cells(name, s)
        rows.append(f"| {date} | {machine} | {commit} | `{command}` | {name} | {c['trials']} | {c['steps']} | "
                    f"{c['fraction']} | {c['accuracy'] if c['choice'] != 'none' else 'none'} | {c['diff']} | {c['goal']} |")
    append_table_rows(path, SECTION, HEADER, rows, preamble=f"![search efficiency]({plot})\n\n")
