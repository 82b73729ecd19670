"""Confirmed winners: after a sweep, its best candidates are trained again with several seeds and
ranked on validation with intervals, so that noise is not mistaken for a winner.

A sweep's objective is one noisy draw per trial (a few validation batches, one seed): the top of
the table can be the luckiest trial, not the best config. Here each candidate (the top
``tune.confirm_top`` trials of a one-objective sweep, the Pareto front of a multi-objective one)
runs the whole pipeline (pre-training, fine-tuning, evaluation on the whole ``val`` split) once per
seed of ``tune.confirm_seeds``. Each objective is then the candidate's validation accuracy, the
mean over seeds, with a 95% interval that resamples images and seeds
(``ImageBootstrap.seeded_interval``, as the ablation). The candidates are ranked by the first
objective's mean; the top is named the **winner** only when its paired difference from the
runner-up (the same questions, seed by seed) has an interval above 0. Otherwise the result is a
**tie** among the top and every candidate whose difference from it holds 0: the data cannot tell
them apart, and ``best_config.yaml`` is the higher mean, not a proven winner.

The objectives a candidate can be confirmed on are the per-question ones (``CONFIRMABLE``): the
VQA accuracy of all validation questions and of the cross-domain ones, exactly as evaluation and
in-run validation define them. Only validation is read here: the job evaluates the test split
once, for the confirmed choice, after this ranking has fixed it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import numpy as np

from raymmr import storage
from raymmr.config import Config, objectives
from raymmr.errors import JobError
from raymmr.tune.space import apply_params

CONFIRM_DIR = "confirm"  # in the sweep's --out: a run per (candidate, seed), confirm.json and confirm.md
# metric -> the questions it averages (evaluation's questions.jsonl): None all, False cross-domain only
CONFIRMABLE = {"val_vqa_accuracy": None, "val_vqa_accuracy_cross_domain": False}


def check_confirmable(cfg: Config) -> None:
    """A confirmation ranks on per-question validation accuracy: refuse objectives it cannot read."""
    other = [m for m, _ in objectives(cfg.tune) if m not in CONFIRMABLE]
    if cfg.tune.confirm_top and other:
        raise JobError(f"tune.confirm_top={cfg.tune.confirm_top}: a confirmation ranks on validation questions "
                       f"({', '.join(CONFIRMABLE)}), not on {', '.join(other)}; set tune.confirm_top=0")


def candidates(records: Sequence[dict], cfg: Config, front: Sequence[dict] | None) -> list[dict]:
    """The trials to confirm: the Pareto front (several objectives), else the best
    ``tune.confirm_top`` trials by the objective; only trials that finished."""
    from raymmr.tune.report import rank_trials

    if front is not None:  # best first by the first objective: the first confirm_top points of the front
        return list(front)[: cfg.tune.confirm_top]
    ranked = [r for r in rank_trials(records, objectives(cfg.tune)[0][1]) if r["rank"] is not None]
    return ranked[: cfg.tune.confirm_top]


def confirm_seeds(cfg: Config) -> list[int]:
    return [int(s) for s in cfg.tune.confirm_seeds.split(",")]


def run_confirmation(base: Config, chosen: Sequence[dict], out: str, data: str, log: Callable = print) -> dict:
    """Train and evaluate every (candidate, seed) on validation under ``<out>/confirm/<trial>/seed<s>``
    (finished runs are read back, not trained again), then rank them (``confirmed_ranking``);
    writes ``confirm.json`` and ``confirm.md`` there and returns the ranking."""
    from raymmr.eval.evaluate import read_questions
    from raymmr.pipeline import SELECTION_SPLIT, run_pipeline

    seeds = confirm_seeds(base)
    runs: dict[str, list[dict]] = {}
    for c in chosen:
        runs[c["trial_id"]] = []
        for seed in seeds:
            run = storage.join(out, CONFIRM_DIR, c["trial_id"], f"seed{seed}")
            questions = read_questions(storage.join(run, "eval", SELECTION_SPLIT))
            if questions is None:
                log(f"[confirm] trial {c['trial_id']} ({c['params']}), seed {seed}: the pipeline on validation -> {run}")
                cfg = apply_params(base, {**c["params"], "train.seed": seed})
                run_pipeline(cfg, run, data, text_only=False, severities=(), log=log)
                questions = read_questions(storage.join(run, "eval", SELECTION_SPLIT))
            else:
                log(f"[confirm] trial {c['trial_id']}, seed {seed}: done before, reading {run}")
            runs[c["trial_id"]].append(questions)
    ranking = confirmed_ranking(runs, objectives(base.tune), seeds)
    for entry in ranking["candidates"]:
        entry["params"] = next(c["params"] for c in chosen if c["trial_id"] == entry["trial_id"])
    storage.write_text(storage.join(out, CONFIRM_DIR, "confirm.json"), json.dumps(ranking, indent=1) + "\n")
    storage.write_text(storage.join(out, CONFIRM_DIR, "confirm.md"), confirm_markdown(ranking))
    return ranking


def confirmed_ranking(runs: dict[str, list[dict[str, dict]]], named: Sequence[tuple[str, str]],
                      seeds: Sequence[int], n_boot: int = 1000) -> dict:
    """Rank candidates by their seed-averaged validation accuracy.

    ``runs``: candidate -> one dict per seed (same order for every candidate), question key ->
    that run's row of evaluation's ``questions.jsonl`` (``image``, ``in_domain``, ``correct``).
    ``named``: ``(metric, mode)`` pairs of ``CONFIRMABLE`` metrics, the first the ranking's.
    Returns ``{"metric", "seeds", "candidates": [{"trial_id", "mean": {metric: m}, "ci": {metric:
    [lo, hi]}, "minus_top": {"mean", "ci"}}] (best first), "winner": id or None, "tied": [ids]}``:
    a winner only when the top's paired difference from the runner-up has an interval above 0
    (below 0 for a minimised metric); else ``tied`` lists the top and every candidate whose
    difference from it holds 0."""
    from raymmr.eval.metrics import ImageBootstrap

    if not runs:
        raise ValueError("confirmed_ranking: no candidate")
    first = next(iter(runs.values()))[0]
    keys = sorted(first)
    for trial, per_seed in runs.items():
        if len(per_seed) != len(seeds) or any(sorted(q) != keys for q in per_seed):
            raise ValueError(f"confirmed_ranking: candidate {trial} lacks a seed or answers other questions")
    boot = ImageBootstrap([first[k]["image"] for k in keys], n_boot=n_boot)
    in_domain = np.array([first[k]["in_domain"] for k in keys])

    def mask(metric: str):
        subset = CONFIRMABLE[metric]
        return None if subset is None else in_domain == subset

    def hits(trial: str) -> np.ndarray:  # [S, Q] clean correctness, seed by seed
        return np.array([[q[k]["correct"]["clean"] for k in keys] for q in runs[trial]], dtype=np.float64)

    entries = []
    for trial in runs:
        h = hits(trial)
        stats = {metric: boot.seeded_interval(h, mask(metric)) for metric, _ in named}
        entries.append({"trial_id": trial, "mean": {m: s[0] for m, s in stats.items()},
                        "ci": {m: list(s[1]) for m, s in stats.items()}})
    metric, mode = named[0]
    sign = 1.0 if mode == "max" else -1.0
    entries.sort(key=lambda e: (-sign * e["mean"][metric], e["trial_id"]))
    top = entries[0]
    top_hits = hits(top["trial_id"])
    for e in entries[1:]:
        mean, ci = boot.seeded_interval(hits(e["trial_id"]) - top_hits, mask(metric))
        e["minus_top"] = {"mean": mean, "ci": list(ci)}

    def separated(e: dict) -> bool:  # the top beats e: e - top below 0 (max) or above 0 (min), all of it
        lo, hi = e["minus_top"]["ci"]
        return (hi < 0) if mode == "max" else (lo > 0)

    winner = top["trial_id"] if len(entries) > 1 and separated(entries[1]) else None
    tied = [] if winner or len(entries) == 1 else [top["trial_id"]] + [e["trial_id"] for e in entries[1:]
                                                                          if not separated(e)]
    return {"metric": metric, "mode": mode, "objectives": [list(x) for x in named], "seeds": list(seeds),
            "candidates": entries, "winner": winner, "tied": tied}


def confirm_markdown(ranking: dict) -> str:
    """The confirmed ranking as Markdown: each candidate's mean and interval per objective, its
    difference from the top, and the verdict (a winner, or a tie)."""
    metrics = [m for m, _ in ranking["objectives"]]
    seeds = ", ".join(map(str, ranking["seeds"]))

    def pct(x: float) -> str:
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

    lines = ["# Confirmed ranking", "",
             f"Each candidate trained again with seeds {seeds} and evaluated on the whole validation split; "
             "mean over seeds with a 95% interval resampling images and seeds; ranked by "
             f"`{ranking['metric']}`; the difference from the top is paired (same questions, seed by seed).", ""]
    top = ranking["candidates"][0]["trial_id"]
    if ranking["winner"]:
        lines += [f"**Winner: `{ranking['winner']}`**: its difference from the runner-up excludes 0.", ""]
    elif len(ranking["candidates"]) == 1:
        lines += [f"One candidate, `{top}`: nothing to compare it with.", ""]
    else:
        lines += [f"**Tied: {', '.join(f'`{t}`' for t in ranking['tied'])}**: the top's difference from the "
                  f"runner-up holds 0. `best_config.yaml` is `{top}`, the higher mean, not a proven winner.", ""]
    head = ["trial", *(f"{m} (%)" for m in metrics), f"− top, {ranking['metric']} (points)", "params"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for e in ranking["candidates"]:
        cells = [f"{pct(e['mean'][m])} [{pct(e['ci'][m][0])}, {pct(e['ci'][m][1])}]" for m in metrics]
        diff = e.get("minus_top")
        d = "—" if diff is None else (f"{100 * diff['mean']:+.1f} [{100 * diff['ci'][0]:+.1f}, "
                                      f"{100 * diff['ci'][1]:+.1f}]")
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.get("params", {}).items())
        lines.append(f"| `{e['trial_id']}` | " + " | ".join(cells) + f" | {d} | {params} |")
    return "\n".join(lines) + "\n"
