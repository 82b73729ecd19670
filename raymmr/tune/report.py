"""The report of a finished sweep: ranked table (CSV + Markdown), the best config, and plots.

Input is a list of trial records, one dict per trial, independent of Ray::

    {"trial_id": "a1b2", "params": {"loss.w_img": 0.5, ...}, "objective": 0.71,
     "iterations": 3, "status": "TERMINATED"}

``objective`` is the fixed validation metric the sweep optimises (``None``/nan when the trial never
reported it); ``status`` is Ray Tune's (``TERMINATED`` covers ASHA-stopped trials, ``ERROR`` failed
ones). A trial is *eligible* to be ranked and to be best when its objective is finite and its status is
not ``ERROR``; records are taken in the order given (the tuner passes them in completion order,
which is the x axis of the optimisation history).

``write_report`` writes into ``out_dir``: ``trials.csv``, ``trials.md`` (ranked by objective for
``mode`` min/max), ``best_config.yaml`` (the base config with the best params, through
``raymmr.config.save_config`` so ``load_config(path)`` reads it as is), ``best_trial.json`` and
three PNG plots: ``history.png``, ``importances.png``, ``parallel_coordinates.png``.

Parameter importances come from ``optuna.importance`` (PED-ANOVA, Optuna's default) when an Optuna study with at
least two completed trials is passed. Otherwise (grid sweeps, or no study) a rank-correlation fallback
is used: for a numeric parameter the absolute Spearman correlation between its value and the
objective; for a categorical/bool one the correlation ratio eta between its categories and the
objective's ranks. Both lie in [0, 1]; they are normalised to sum to 1 like Optuna's. The fallback
sees one parameter at a time (no interactions) and is only indicative on few trials.

Plots: for a sampled sweep with an Optuna study of >= 2 completed trials, Optuna's own
``optuna.visualization.matplotlib`` draws all three from the study; grid sweeps (no study) get
raymmr's, drawn on matplotlib's Agg canvas directly (no pyplot, no display needed).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raymmr.config import Config, save_config
from raymmr.errors import JobError
from raymmr.eval.metrics import markdown_table
from raymmr.tune.space import apply_params

REQUIRED_KEYS = ("trial_id", "params", "objective", "iterations", "status")
BASE_COLUMNS = ("rank", "trial_id", "status", "iterations", "objective")


# --------------------------------------------------------------------------- records and ranking


def _check_records(records: Sequence[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(
                f"trial record {i} ({r.get('trial_id', '?')}) lacks {missing}; needs {list(REQUIRED_KEYS)}"
            )
        if not isinstance(r["params"], dict):
            raise ValueError(
                f"trial record {r['trial_id']}: 'params' must be a dict of dotted keys, got {r['params']!r}"
            )
        obj = r["objective"]
        out.append({**r, "objective": float(obj) if obj is not None else math.nan})
    return out


def _eligible(r: dict) -> bool:
    return math.isfinite(r["objective"]) and str(r["status"]).upper() != "ERROR"


def check_some_finished(records: Sequence[dict]) -> None:
    """A sweep none of whose trials finished with a finite objective has failed: raise ``JobError``
    naming each trial, its status and its error (the report is written before this is called)."""
    recs = _check_records(records)
    if any(_eligible(r) for r in recs):
        return
    lines = [f"  {r['trial_id']}: {r['status']}" + (f": {r['error']}" if r.get("error") else " (no objective reported)")
             for r in recs]
    raise JobError(f"no trial of the sweep finished ({len(recs)} trial(s)):\n" + "\n".join(lines)
                   if recs else "no trial of the sweep ran")


def rank_trials(records: Sequence[dict], mode: str = "max") -> list[dict]:
    """Records sorted best first (ties by trial_id), each with ``rank`` 1..k; ineligible trials
    (errored or without a finite objective) follow with ``rank`` None."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    recs = _check_records(records)
    sign = -1.0 if mode == "max" else 1.0
    good = sorted((r for r in recs if _eligible(r)), key=lambda r: (sign * r["objective"], str(r["trial_id"])))
    rest = [r for r in recs if not _eligible(r)]
    return [{**r, "rank": i + 1} for i, r in enumerate(good)] + [{**r, "rank": None} for r in rest]


def best_trial(records: Sequence[dict], mode: str = "max") -> dict | None:
    """The best eligible record, or None when no trial is eligible."""
    ranked = rank_trials(records, mode)
    return ranked[0] if ranked and ranked[0]["rank"] == 1 else None


def _signed(r: dict, objectives: Sequence[tuple[str, str]]) -> tuple[float, ...] | None:
    """A trial's objective values, each signed so that larger is better; None when the trial
    errored or lacks a finite value of one of them."""
    if str(r["status"]).upper() == "ERROR":
        return None
    values = [(r.get("objectives") or {}).get(metric) for metric, _ in objectives]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return tuple(float(v) if mode == "max" else -float(v) for v, (_, mode) in zip(values, objectives))


def pareto_front(records: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> list[dict]:
    """The Pareto front of a multi-objective sweep: the trials with a finite value of every
    objective (``record["objectives"][metric]``; errored trials excluded) that no other such trial
    dominates (at least as good in every objective and better in one; ``objectives`` are
    ``(metric, mode)`` pairs). Trials with equal values are all on it. Sorted best first by the
    first objective."""
    recs = _check_records(records)
    points = [(r, v) for r in recs if (v := _signed(r, objectives)) is not None]

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    front = [r for r, v in points if not any(dominates(w, v) for _, w in points)]
    return sorted(front, key=lambda r: (-_signed(r, objectives)[0], str(r["trial_id"])))


def _param_keys(records: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r["params"] if k not in keys]
    return keys


def _flat_rows(ranked: Sequence[dict], front: Sequence[dict] | None = None,
               metrics: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    """Table rows: the base columns and one per param; with ``metrics`` (a multi-objective sweep),
    a column per objective and ``front`` (whether the trial is on ``front``) instead of ``objective``."""
    keys = _param_keys(ranked)
    if not metrics:
        rows = [{**{c: r[c] for c in BASE_COLUMNS}, **{k: r["params"].get(k) for k in keys}} for r in ranked]
        return [*BASE_COLUMNS, *keys], rows
    on_front = {str(r["trial_id"]) for r in front or ()}
    base = [c for c in BASE_COLUMNS if c != "objective"]
    rows = [{**{c: r[c] for c in base}, "front": "yes" if str(r["trial_id"]) in on_front else "",
             **{m: (r.get("objectives") or {}).get(m) for m in metrics}, **{k: r["params"].get(k) for k in keys}}
            for r in ranked]
    return [*base, "front", *metrics, *keys], rows


# --------------------------------------------------------------------------- tables and best config


def write_trials_csv(ranked: Sequence[dict], path: str | Path, front: Sequence[dict] | None = None,
                     metrics: Sequence[str] = ()) -> None:
    """One row per trial: rank, trial_id, status, iterations, objective (several objectives: a
    column each and ``front``), then one column per param (empty where a conditional param was not
    drawn)."""
    columns, rows = _flat_rows(ranked, front, metrics)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})


def noise_note(ranked: Sequence[dict], metric: str, questions: int | None) -> str:
    """How noisy the objective is: the 95% interval of an accuracy measured on ``questions``
    questions (normal approximation at the best trial's value), and a warning when the spread of the
    eligible trials' objectives lies inside it. "" when the metric is no accuracy or n is unknown."""
    good = [r["objective"] for r in ranked if r["rank"] is not None]
    if not questions or not good or "accuracy" not in metric:
        return ""
    p = min(max(max(good), 0.0), 1.0)
    half = 1.96 * math.sqrt(max(p * (1 - p), 0.25 / questions) / questions)
    spread = max(good) - min(good)
    note = (f"Noise: each `{metric}` is measured on {questions} validation questions, a 95% interval of about "
            f"±{100 * half:.1f} points at {100 * p:.1f}%.")
    if len(good) > 1 and spread <= 2 * half:
        note += (f" **The trials' spread ({100 * spread:.1f} points, best to worst) is inside that interval: this "
                 "ranking may be noise.** Confirm the top trials with several seeds (tune.confirm_top) before "
                 "trusting it, or raise train.val_batches.")
    return note


def write_trials_markdown(
    ranked: Sequence[dict], path: str | Path, *, mode: str, metric: str, title: str = "Sweep", plots: Sequence[str] = (),
    objectives: Sequence[tuple[str, str]] = (), front: Sequence[dict] | None = None, questions: int | None = None,
) -> None:
    """A ranked Markdown table with a header summarising the sweep and links to the plots. With
    several ``objectives``, the Pareto ``front`` first (its own table, a config per point), then
    every trial (ranked by the first objective, with a column per objective).

    Unranked trials show rank '-'; a conditional param a trial did not draw is left blank."""
    metrics = [m for m, _ in objectives] if len(objectives) > 1 else []
    columns, rows = _flat_rows(ranked, front, metrics)
    rows = [{k: ("-" if k == "rank" else "") if v is None else v for k, v in row.items()} for row in rows]
    statuses: dict[str, int] = {}
    for r in ranked:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    best = ranked[0] if ranked and ranked[0]["rank"] == 1 else None
    if metrics:
        named = ", ".join(f"`{m}` ({d}imised)" for m, d in objectives)
        head = [f"Objectives: {named}. Trials: {len(ranked)} ({counts}).", "",
                f"A multi-objective sweep has no single best: its result is the Pareto front, the {len(front or [])} "
                "trial(s) that no other trial beats in every objective at once (a config each in `front/`). "
                "Every trial ran to its end (no early stopping: ASHA ranks on one metric).", ""]
        if front:
            keys = _param_keys(front)
            front_rows = [{"trial_id": r["trial_id"], **{m: r["objectives"][m] for m in metrics},
                           "config": f"front/{r['trial_id']}.yaml", **{k: r["params"].get(k, "") for k in keys}}
                          for r in front]
            head += ["## Pareto front", "", markdown_table(front_rows, ["trial_id", *metrics, "config", *keys],
                                                         floatfmt=".4g").rstrip("\n"), "", "## All trials", ""]
    else:
        head = [f"Objective: `{metric}` ({mode}imised). Trials: {len(ranked)} ({counts}).", "",
                f"Best: trial `{best['trial_id']}`, {metric} = {best['objective']:.6g}, params {best['params']}."
                if best else "Best: none (no trial reported a finite objective).", ""]
    noise = noise_note(ranked, metric, questions)
    lines = [f"# {title}", "", *head, *([noise, ""] if noise else []),
             markdown_table(rows, columns, floatfmt=".4g").rstrip("\n"), ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    Path(path).write_text("\n".join(lines) + "\n")


def write_best_config(base_cfg: Config, params: dict, path: str | Path) -> Config:
    """Apply ``params`` to ``base_cfg`` (validated) and save it with ``save_config``; returns it."""
    cfg = apply_params(base_cfg, params)
    save_config(cfg, path)
    return cfg


# --------------------------------------------------------------------------- importances


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (Spearman's convention)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _correlation_ratio(categories: list, y: np.ndarray) -> float:
    ry = _ranks(y)
    total = ((ry - ry.mean()) ** 2).sum()
    if total == 0:
        return 0.0
    between = 0.0
    for c in set(map(repr, categories)):
        group = ry[[repr(v) == c for v in categories]]
        between += len(group) * (group.mean() - ry.mean()) ** 2
    return float(math.sqrt(between / total))


def _is_numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def rank_correlation_importances(records: Sequence[dict]) -> dict[str, float]:
    """The fallback importances (module docstring), normalised to sum to 1, largest first."""
    good = [r for r in _check_records(records) if _eligible(r)]
    raw = {}
    for key in _param_keys(good):
        rows = [r for r in good if r["params"].get(key) is not None]
        values = [r["params"][key] for r in rows]
        y = np.array([r["objective"] for r in rows], dtype=float)
        if len(rows) < 2 or len({repr(v) for v in values}) < 2:
            raw[key] = 0.0
        elif _is_numeric(values):
            raw[key] = abs(_spearman(np.array(values, dtype=float), y))
        else:
            raw[key] = _correlation_ratio(values, y)
    total = sum(raw.values())
    norm = {k: (v / total if total > 0 else 0.0) for k, v in raw.items()}
    return dict(sorted(norm.items(), key=lambda kv: -kv[1]))


def param_importances(records: Sequence[dict], study=None) -> tuple[dict[str, float], str]:
    """``(importances, method)``: Optuna PED-ANOVA on ``study`` when it has >= 2 completed trials,
    else the rank-correlation fallback (also used when Optuna cannot compute them)."""
    if study is not None:
        import optuna

        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(completed) >= 2:
            try:
                # PED-ANOVA: Optuna 5's default evaluator; deterministic and, unlike fANOVA,
                # free of scikit-learn (not a dependency of this project)
                evaluator = optuna.importance.PedAnovaImportanceEvaluator()
                imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
                if imp:
                    return {k: float(v) for k, v in imp.items()}, "optuna PED-ANOVA"
            except (ValueError, RuntimeError, ZeroDivisionError):
                pass  # e.g. all objectives equal or no parameter common to every trial
    return rank_correlation_importances(records), "rank correlation (|Spearman| / eta)"


# --------------------------------------------------------------------------- plots


def plot_study(study, paths: dict[str, Path], *, metric: str, importance_method: str) -> bool:
    """The three plots drawn by ``optuna.visualization.matplotlib`` from the study, when there is one
    with >= 2 completed trials (a sampled sweep); False otherwise (grid sweeps: our own plots)."""
    if study is None:
        return False
    import warnings

    import optuna
    from matplotlib import pyplot  # optuna's matplotlib plots draw through pyplot
    from optuna.visualization import matplotlib as vis

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return False
    names = {name for trial in completed for name in trial.params}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator() if importance_method.startswith("optuna") else None
    drawings = {
        "history": lambda: vis.plot_optimization_history(study, target_name=metric),
        "importances": lambda: vis.plot_param_importances(study, evaluator=evaluator, target_name=metric),
        "parallel": lambda: vis.plot_parallel_coordinate(study, target_name=metric),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in drawings.items():
            try:
                ax = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):
                pyplot.close("all")
                return False  # e.g. equal objectives: no importances; all three come from one source
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            if name == "parallel":
                fit_parallel_labels(figure, len(names))
            else:
                figure.set_size_inches(7.0, 4.5)
            figure.tight_layout()
            figure.savefig(paths[name], format="png", dpi=100)
            pyplot.close(figure)
    return True


def fit_parallel_labels(figure, n_params: int) -> None:
    """A parallel-coordinates figure with an axis per parameter (Optuna's draws them at one width):
    as wide as its axes need, their labels slanted so that long dotted keys do not overprint."""
    figure.set_size_inches(max(7.0, 1.4 * (n_params + 1) + 2.0), 5.5)
    for axis in figure.axes:
        for label in axis.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
            label.set_fontsize(8)


def _new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def _empty_note(ax, text: str = "no completed trials") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_history(records: Sequence[dict], path: str | Path, *, mode: str = "max", metric: str = "objective") -> None:
    """Objective of each eligible trial in record order, with the best-so-far as a step line."""
    recs = _check_records(records)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    xs = [i for i, r in enumerate(recs) if _eligible(r)]
    ys = [recs[i]["objective"] for i in xs]
    if xs:
        best = np.maximum.accumulate(ys) if mode == "max" else np.minimum.accumulate(ys)
        ax.scatter(xs, ys, s=18, label="trial", color="tab:blue")
        ax.step(xs, best, where="post", color="tab:red", label=f"best so far ({mode})")
        ax.set_xlabel("trial (completion order)")
        ax.set_ylabel(metric)
        ax.legend(loc="best")
    else:
        _empty_note(ax)
    ax.set_title(f"Optimisation history: {metric}")
    _save(fig, path)


def plot_front(records: Sequence[dict], objectives: Sequence[tuple[str, str]], front: Sequence[dict],
               path: str | Path) -> None:
    """Every trial with finite objectives as a point on the first two objectives, the Pareto front
    marked, joined and labelled with trial ids."""
    recs = _check_records(records)
    (x_metric, x_mode), (y_metric, y_mode) = objectives[0], objectives[1]
    fig = _new_figure(7.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    points = [r for r in recs if _signed(r, objectives) is not None]
    if points:
        ax.scatter([r["objectives"][x_metric] for r in points], [r["objectives"][y_metric] for r in points],
                   s=22, color="tab:gray", label="trial")
        line = sorted(front, key=lambda r: r["objectives"][x_metric])
        xs, ys = [r["objectives"][x_metric] for r in line], [r["objectives"][y_metric] for r in line]
        ax.plot(xs, ys, "o-", color="tab:red", label="Pareto front")
        for r, x, y in zip(line, xs, ys):
            ax.annotate(str(r["trial_id"])[-8:], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{x_metric} ({x_mode})")
        ax.set_ylabel(f"{y_metric} ({y_mode})")
        ax.legend(loc="best")
    else:
        _empty_note(ax, "no trial with every objective")
    more = f" (first two of {len(objectives)} objectives)" if len(objectives) > 2 else ""
    ax.set_title(f"Pareto front{more}")
    _save(fig, path)


def plot_importances(importances: dict[str, float], method: str, path: str | Path) -> None:
    """Horizontal bars, most important on top; the title names the method used."""
    fig = _new_figure(7.0, max(2.5, 0.4 * len(importances) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:green")
        ax.set_xlabel("importance (normalised)")
    else:
        _empty_note(ax, "no parameters to rank")
    ax.set_title(f"Parameter importances: {method}")
    _save(fig, path)


def _axis_positions(values: list) -> tuple[list[float], list[tuple[float, str]]]:
    """Map one column to [0, 1] (nan where missing) and return (positions, ticks)."""
    present = [v for v in values if v is not None]
    if present and _is_numeric(present):
        arr = np.array(present, dtype=float)
        lo, hi = float(arr.min()), float(arr.max())
        use_log = lo > 0 and hi / lo >= 100
        f = np.log10 if use_log else (lambda a: a)
        span = f(hi) - f(lo)
        pos = [math.nan if v is None else (0.5 if span == 0 else float((f(v) - f(lo)) / span)) for v in values]
        ticks = [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")] if span else [(0.5, f"{lo:.3g}")]
        return pos, ticks
    cats = sorted({repr(v): v for v in present}.items())
    slot = {r: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, (r, _) in enumerate(cats)}
    pos = [math.nan if v is None else slot[repr(v)] for v in values]
    return pos, [(slot[r], str(v)) for r, v in cats]


def plot_parallel_coordinates(
    records: Sequence[dict], path: str | Path, *, mode: str = "max", metric: str = "objective"
) -> None:
    """One line per eligible trial across one axis per param plus the objective, each axis min-max
    normalised to [0, 1] (log10 when a positive param spans >= 100x; categories evenly spaced).
    Colour: objective, brighter = better. A conditional param a trial did not draw breaks its line."""
    good = [r for r in _check_records(records) if _eligible(r)]
    keys = _param_keys(good)
    fig = _new_figure(max(6.0, 1.3 * (len(keys) + 1) + 1.5), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if not good:
        _empty_note(ax)
        _save(fig, path)
        return
    columns = [[r["params"].get(k) for r in good] for k in keys] + [[r["objective"] for r in good]]
    laid = [_axis_positions(col) for col in columns]
    obj = np.array([r["objective"] for r in good])
    span = obj.max() - obj.min()
    quality = (obj - obj.min()) / span if span else np.full(len(obj), 0.5)
    if mode == "min":
        quality = 1.0 - quality
    colormap = matplotlib.colormaps["viridis"]
    lo, hi = float(obj.min()), float(obj.max())
    norm = colors.Normalize(vmin=lo, vmax=hi if span else lo + 1.0)
    xs = list(range(len(columns)))
    for i in np.argsort(quality):  # best drawn last, on top
        ys = [laid[j][0][i] for j in xs]
        ax.plot(xs, ys, color=colormap(float(quality[i])), alpha=0.8, linewidth=1.4)
    for j, (_, ticks) in enumerate(laid):
        ax.axvline(j, color="0.3", linewidth=0.8)
        for y, label in ticks:
            ax.text(j + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(xs)
    ax.set_xticklabels([*keys, metric], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(columns) - 0.6)
    sm = cm.ScalarMappable(norm=norm, cmap=colormap if mode == "max" else colormap.reversed())
    fig.colorbar(sm, ax=ax, label=metric)
    ax.set_title("Parallel coordinates (axes normalised to [0, 1])")
    _save(fig, path)


# --------------------------------------------------------------------------- everything


def write_report(
    records: Sequence[dict],
    out_dir: str | Path,
    *,
    base_cfg: Config,
    mode: str = "max",
    metric: str = "objective",
    study=None,
    title: str = "Sweep",
    questions: int | None = None,
) -> dict[str, Path]:
    """Write the whole report into ``out_dir`` (created) and return ``{name: path}``.

    ``metric`` and ``mode`` may name several objectives, separated by commas (``tune.metric``,
    ``tune.mode``): the report then gives the Pareto front (``pareto_front``): ``front.png``,
    ``front.json`` and one config per front point, ``front/<trial_id>.yaml``; ranking and the
    history plot use the first objective. With one objective, ``best_config.yaml`` and
    ``best_trial.json`` are written when some trial is eligible. ``questions``: how many validation
    questions each objective value was measured on (``checks.validation_questions``), for the
    table's noise note (``noise_note``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objectives = list(zip(metric.split(","), mode.split(",")))
    primary, primary_mode = objectives[0]
    multi = len(objectives) > 1
    ranked = rank_trials(records, primary_mode)
    paths = {
        "csv": out / "trials.csv",
        "markdown": out / "trials.md",
        "history": out / "history.png",
        "importances": out / "importances.png",
        "parallel": out / "parallel_coordinates.png",
    }
    importances, method = param_importances(records, study)
    # Optuna's plots of a multi-objective study need one target: ours, on the primary objective.
    if multi or not plot_study(study, paths, metric=primary, importance_method=method):
        plot_history(records, paths["history"], mode=primary_mode, metric=primary)
        plot_importances(importances, method, paths["importances"])
        plot_parallel_coordinates(records, paths["parallel"], mode=primary_mode, metric=primary)
    front = pareto_front(records, objectives) if multi else None
    metrics = [m for m, _ in objectives] if multi else []
    write_trials_csv(ranked, paths["csv"], front, metrics)
    plots = [paths["history"], paths["importances"], paths["parallel"]]
    if multi:
        paths["front_plot"] = out / "front.png"
        plot_front(records, objectives, front, paths["front_plot"])
        plots.insert(0, paths["front_plot"])
    write_trials_markdown(ranked, paths["markdown"], mode=primary_mode, metric=primary, title=title,
                          plots=[str(p) for p in plots], objectives=objectives, front=front, questions=questions)
    if multi:
        summary = []
        for r in front:
            paths[f"front/{r['trial_id']}"] = out / "front" / f"{r['trial_id']}.yaml"
            paths[f"front/{r['trial_id']}"].parent.mkdir(exist_ok=True)
            write_best_config(base_cfg, r["params"], paths[f"front/{r['trial_id']}"])
            summary.append({"trial_id": r["trial_id"], "objectives": r["objectives"], "params": r["params"],
                            "config": f"front/{r['trial_id']}.yaml"})
        paths["front"] = out / "front.json"
        paths["front"].write_text(json.dumps({"objectives": objectives, "front": summary, "importances": importances,
                                              "importance_method": method}, indent=2, default=_json_default) + "\n")
        return paths
    best = ranked[0] if ranked and ranked[0]["rank"] == 1 else None
    if best is not None:
        paths["best_config"] = out / "best_config.yaml"
        write_best_config(base_cfg, best["params"], paths["best_config"])
        paths["best_trial"] = out / "best_trial.json"
        summary = {k: best[k] for k in ("trial_id", "objective", "iterations", "status", "params")}
        summary.update(metric=metric, mode=mode, importances=importances, importance_method=method)
        paths["best_trial"].write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return paths


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return str(v)
