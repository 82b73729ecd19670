"""Measured search efficiency: does a raymmr sweep find a model as good as the full grid's, for less
compute? (BENCHMARKS.md, "Search efficiency".)

On one fine-tuning space, from one shared pre-training, three searches run as real sweeps:

- ``grid``: every point of the space to its end (``tune.scheduler=fifo``);
- ``random_asha``: random search over the same points (each grid list becomes a ``choice``), ASHA;
- ``tpe_asha``: Optuna's TPE over the same points, ASHA.

Accounting is in fine-tuning steps: a trial that reached ``k`` of ``tune.rungs`` rungs cost
``k / rungs`` of ``finetune.steps`` (ASHA stops trials at rungs); the shared pre-training is the
same for all three and not counted. Each search's choice is its best trial that ran to its end,
by its own objective (the in-run validation metric it optimised); that choice is then *confirmed*:
its export is evaluated on the whole validation split, and compared with the grid's choice on the
same questions (a paired difference with a 95% interval resampling images). The goal: a search
whose choice is not shown worse than the grid's (the interval of its difference holds 0 or lies
above it) at no more than ``GOAL_FRACTION`` of the grid's steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from raymmr import storage
from raymmr.config import Config, CoreLoader
from raymmr.tune.space import SearchSpace, apply_params, load_space

SEARCHES = {  # name -> the tune settings that make it
    "grid": {"tune.scheduler": "fifo"},
    "random_asha": {"tune.scheduler": "asha", "tune.sampler": "random"},
    "tpe_asha": {"tune.scheduler": "asha", "tune.sampler": "tpe"},
}
GOAL_FRACTION = 0.35  # of the grid's fine-tuning steps


def sampled_space(grid_path: str | Path, out_dir: Path) -> SearchSpace:
    """The grid space with each ``grid`` list turned into a ``choice`` over the same values: the
    points a sampler draws from are the grid's."""
    raw = yaml.load(Path(grid_path).read_text(), Loader=CoreLoader)
    for key, spec in list(raw.get("params", {}).items()):
        if isinstance(spec, dict) and "grid" in spec:
            raw["params"][key] = {"choice": spec["grid"]}
    path = out_dir / f"{Path(grid_path).stem}_sampled.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_space(path)


def trial_steps(record: dict, steps: int, rungs: int) -> float:
    """The fine-tuning steps a trial cost: the rungs it reached out of ``rungs``, of ``steps``."""
    return min(float(record["iterations"] or 0), rungs) / rungs * steps


def choice(records: list[dict]) -> dict | None:
    """A search's choice: its best trial (by objective, maximised) among those that ran to the end."""
    done = [r for r in records if r["status"] == "COMPLETED" and r["objective"] is not None]
    return max(done, key=lambda r: (r["objective"], r["trial_id"])) if done else None


def best_so_far(records: list[dict], steps: int, rungs: int) -> list[tuple[float, float]]:
    """(cumulative steps, best objective reported so far) after each trial, in completion order."""
    spent, best, curve = 0.0, -np.inf, []
    for r in records:
        spent += trial_steps(r, steps, rungs)
        if r["objective"] is not None and r["status"] != "ERROR":
            best = max(best, r["objective"])
        curve.append((spent, best if np.isfinite(best) else float("nan")))
    return curve


def run_efficiency(base: Config, grid_path: str, out: str, data: str, samples: int, log=print) -> dict:
    """Run the three searches of ``SEARCHES`` into ``out/<search>`` from one shared pre-training,
    confirm each choice on validation, and write ``efficiency.json``, ``efficiency.md`` and
    ``efficiency.png`` into ``out`` (a local directory). A search that finished before is read back."""
    from raymmr.eval.evaluate import evaluate, read_questions
    from raymmr.train.launch import connect_ray
    from raymmr.tune.checks import check_metric
    from raymmr.tune.runner import run_sweep
    from raymmr.tune.trial import shared_pretraining

    outdir = Path(storage.normalize(out))  # absolute: trial drivers run in other working directories
    outdir.mkdir(parents=True, exist_ok=True)
    grid = load_space(grid_path)
    if not grid.is_grid or base.tune.objective != "finetune" or grid.touches_pretraining:
        raise ValueError(f"{grid_path}: the efficiency benchmark needs a grid over fine-tuning settings only")
    spaces = {"grid": grid, "random_asha": sampled_space(grid_path, outdir), "tpe_asha": sampled_space(grid_path, outdir)}
    for space in spaces.values():
        check_metric(base, space)
    connect_ray()
    pretrained = shared_pretraining(base, str(outdir), data, local_cluster=True)
    steps, rungs = base.finetune.steps, base.tune.rungs
    results = {}
    for name, settings in SEARCHES.items():
        cfg = apply_params(base, settings)
        where = outdir / name
        saved = where / "records.json"
        if saved.exists():
            log(f"[efficiency] {name}: finished before, reading {saved}")
            records = json.loads(saved.read_text())
        else:
            n = len(grid.grid_points()) if name == "grid" else samples
            log(f"[efficiency] {name}: {n} trial(s) of {steps} fine-tuning steps")
            records = run_sweep(cfg, spaces[name], out=str(where), data=data, num_samples=n, pretrained=pretrained)
            saved.write_text(json.dumps(records, indent=1, default=str))
        chosen = choice(records)
        entry = {"trials": len(records), "steps": sum(trial_steps(r, steps, rungs) for r in records),
                 "curve": best_so_far(records, steps, rungs), "choice": chosen}
        if chosen is not None:
            eval_dir = where / "choice_eval"
            if read_questions(str(eval_dir)) is None:
                export = storage.join(str(where), "trials", chosen["trial_id"], "finetune", storage.EXPORT)
                evaluate(export, data, str(eval_dir), split="val", role="selection", severities=(), progress=False)
            entry["questions"] = read_questions(str(eval_dir))
        results[name] = entry
    report = summarize(results)
    (outdir / "efficiency.json").write_text(json.dumps(report, indent=1, default=str))
    (outdir / "efficiency.md").write_text(markdown(report))
    plot(report, outdir / "efficiency.png")
    return report


def summarize(results: dict, n_boot: int = 1000) -> dict:
    """Each search's compute (its fine-tuning steps, and their fraction of the grid's) and its
    confirmed choice: the whole-validation accuracy with an interval, and the paired difference from
    the grid's choice; ``meets_goal`` where that difference is not shown below 0 at no more than
    ``GOAL_FRACTION`` of the grid's steps."""
    from raymmr.eval.metrics import ImageBootstrap

    grid_q = results["grid"].get("questions")
    keys = sorted(grid_q) if grid_q else []
    boot = ImageBootstrap([grid_q[k]["image"] for k in keys], n_boot=n_boot) if keys else None
    grid_hits = np.array([grid_q[k]["correct"]["clean"] for k in keys], dtype=np.float64) if keys else None
    out = {"goal_fraction": GOAL_FRACTION, "searches": {}}
    for name, r in results.items():
        s = {"trials": r["trials"], "steps": r["steps"], "fraction_of_grid": r["steps"] / results["grid"]["steps"],
             "curve": r["curve"], "choice": None}
        if r["choice"] is not None and r.get("questions") and boot is not None:
            hits = np.array([r["questions"][k]["correct"]["clean"] for k in keys], dtype=np.float64)
            lo, hi = boot.interval(hits)
            d_lo, d_hi = boot.interval(hits - grid_hits)
            s["choice"] = {"trial_id": r["choice"]["trial_id"], "params": r["choice"]["params"],
                           "objective": r["choice"]["objective"], "val_accuracy": float(hits.mean()),
                           "ci": [lo, hi], "minus_grid": float((hits - grid_hits).mean()), "minus_grid_ci": [d_lo, d_hi]}
            s["meets_goal"] = bool(d_hi >= 0 and s["fraction_of_grid"] <= GOAL_FRACTION) if name != "grid" else None
        out["searches"][name] = s
    return out


def cells(name: str, search: dict) -> dict[str, str]:
    """One search's table cells, as the report and BENCHMARKS.md rows both show them: trials,
    steps, share of the grid's steps, its choice, that choice's accuracy with its interval, its
    difference from the grid's choice, and whether it meets the goal."""
    c = search["choice"]
    out = {"trials": str(search["trials"]), "steps": f"{search['steps']:.0f}",
           "fraction": f"{100 * search['fraction_of_grid']:.0f}%", "choice": "none", "accuracy": "—", "diff": "—",
           "goal": "—" if name == "grid" else ("yes" if search.get("meets_goal") else "no")}
    if c is None:
        return out
    out["choice"] = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items())
    out["accuracy"] = f"{100 * c['val_accuracy']:.1f}% [{100 * c['ci'][0]:.1f}, {100 * c['ci'][1]:.1f}]"
    if name != "grid":
        out["diff"] = (f"{100 * c['minus_grid']:+.1f} [{100 * c['minus_grid_ci'][0]:+.1f}, "
                       f"{100 * c['minus_grid_ci'][1]:+.1f}]")
    return out


def markdown(report: dict) -> str:
    lines = ["| search | trials | fine-tuning steps | of the grid's | choice | its validation accuracy | "
             "− the grid's choice (points) | goal met |", "|---|---|---|---|---|---|---|---|"]
    for name, s in report["searches"].items():
        c = cells(name, s)
        lines.append(f"| {name} | {c['trials']} | {c['steps']} | {c['fraction']} | {c['choice']} | {c['accuracy']} | "
                     f"{c['diff']} | {c['goal']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Best objective found so far against fine-tuning steps spent, one line per search, and each
    choice's confirmed validation accuracy (with its interval) at the search's total steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for (name, s), color in zip(report["searches"].items(), ("tab:gray", "tab:blue", "tab:red")):
        xs, ys = zip(*s["curve"]) if s["curve"] else ((), ())
        ax.step(xs, [100 * y for y in ys], where="post", color=color, label=f"{name}: best in-run objective so far")
        c = s["choice"]
        if c is not None:
            ax.errorbar([s["steps"]], [100 * c["val_accuracy"]],
                        yerr=[[100 * (c["val_accuracy"] - c["ci"][0])], [100 * (c["ci"][1] - c["val_accuracy"])]],
                        fmt="D", color=color, capsize=4, label=f"{name}: its choice on all validation")
    ax.set_xlabel("fine-tuning steps spent (shared pre-training not counted)")
    ax.set_ylabel("validation VQA accuracy (%)")
    ax.set_title("Search efficiency: grid vs random + ASHA vs TPE + ASHA")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
