"""Search spaces: YAML files of dotted config paths -> validated, enumerable, Optuna-samplable spaces.

A search space is checked completely when it is loaded, before Ray starts: every key must be a
field of :class:`raymmr.config.Config`, every value must pass that field's range/choices
(``raymmr.config.check_value``), and every distribution must be well formed. Problems raise
:class:`SpaceError` naming the file, the key and the problem.

YAML schema
-----------
Top-level keys (all optional except that ``params`` or ``grid_points`` must be present)::

    description: free text shown in reports
    objective: finetune        # TuneConfig.objective: the pipeline each trial runs
    method: cmdpi              # the method the trials run (raymmr.config.METHODS; default: --method,
                               # else the config's); a paper's grid names the method it reproduces
    params:                    # dotted config path -> spec
      <section.field>: <spec>
    grid_points:               # an explicit list of settings (a grid), each a mapping path -> value
      - {<section.field>: value, ...}

A ``<spec>`` is one of::

    0.5                                   a fixed value, set in every trial (no search)
    {value: 0.5}                          the same, spelled out (needed for list-valued fields)
    {uniform: [low, high]}                float, uniform; optional ``step: s`` (Optuna's discrete step)
    {loguniform: [low, high]}             float, log-uniform; requires 0 < low
    {int: [low, high]}                    integer, inclusive bounds; optional ``step: s``
    {choice: [v1, v2, ...]}               categorical (sampled)
    {grid: [v1, v2, ...]}                 exhaustive: every value is run (a grid)
    {conditional: {v1: {<params>}, v2: {<params>}, ...}}
                                          categorical over the branch values v1, v2, ... for this key;
                                          the nested params are sampled only when their branch is drawn
                                          (e.g. Beta's a and b only when mixup_dist = beta). A branch may
                                          be empty (``uniform: {}``) and may nest further conditionals.

Rules (each violation is a SpaceError):

- a key appears once in the whole file (top level, one branch, or one grid point's columns);
- ``low <= high``; loguniform needs ``low > 0``; both bounds and every listed value must be allowed
  by the config field; uniform/loguniform need a float field, int an int field; bool, str and list
  fields take only fixed values, ``choice``, ``grid`` or ``conditional``;
- ``choice``/``grid``/``conditional`` lists are non-empty and free of duplicates;
- a space is either a *grid* (``grid`` params and/or ``grid_points``) or *sampled* (``uniform``,
  ``loguniform``, ``int``, ``choice``); fixed values and conditionals whose branches hold only fixed
  values fit both (a space of nothing else is a grid). Mixing ``grid`` with sampled distributions is
  refused, because Optuna cannot enumerate a grid inside a random search;
- ``tune.*`` keys are refused (a trial cannot change the sweep that runs it); with
  ``objective: pretrain``, fine-tuning-only keys (``finetune.*``, ``loss.w_mix``, ``loss.w_diff``, ``loss.w_ans_finetune``,
  ``perturbation.in_finetune``)
  are refused, since they would have no effect.

Grid enumeration (:meth:`SearchSpace.grid_points`) is the Cartesian product, in file order, of the
listed ``grid_points`` (or one empty point when there are none) and each grid parameter's values;
fixed values are added to every point. Sampled spaces are run through Optuna define-by-run
(:meth:`SearchSpace.define_by_run`), which returns a flat dict of dotted keys (Ray Tune only
splits keys on ``/``, so dotted keys stay flat in the trial config).

Cross-field constraints of :func:`raymmr.config.validate` (e.g. ``mask_ratio_low <= mask_ratio_high``)
cannot be seen field by field; keep such ranges disjoint in the file, and call
:meth:`SearchSpace.validate_against` with the base config before a sweep to apply every grid point
(or a batch of corner-biased random draws) to it.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raymmr.config import (
    METHODS,
    Config,
    ConfigError,
    CoreLoader,
    check_value,
    field_spec,
    with_values,
)
from raymmr.objective.task import FINETUNE_TERMS

SAMPLED_KINDS = ("uniform", "loguniform", "int", "choice")
ALL_KINDS = (*SAMPLED_KINDS, "grid", "conditional", "value")
TOP_LEVEL_KEYS = ("description", "objective", "method", "params", "grid_points")
# keys that only act during fine-tuning: a pretrain-only trial would silently ignore them (the loss
# weights are those of the fine-tuning terms, objective.task.FINETUNE_TERMS)
FINETUNE_ONLY_PREFIXES = ("finetune.", "perturbation.in_finetune",
                          *sorted({f"loss.{weight}" for weight in FINETUNE_TERMS.values()}))


class SpaceError(ValueError):
    """A search-space file that cannot be run; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Param:
    """One searchable (or fixed) config key.

    ``kind`` is one of ALL_KINDS; ``low``/``high``/``step`` for numeric kinds, ``values`` for
    choice/grid/value (a 1-tuple), ``branches`` (value -> nested params) for conditional.
    """

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    values: tuple = ()
    branches: tuple[tuple[Any, tuple[Param, ...]], ...] = ()

    @property
    def mode(self) -> str:
        """'grid' (enumerated), 'sampled' (drawn) or 'neutral' (fixed values and conditionals over
        fixed branches: finite, so they can be enumerated or sampled alike)."""
        if self.kind == "value":
            return "neutral"
        if self.kind == "grid":
            return "grid"
        if self.kind in SAMPLED_KINDS:
            return "sampled"
        modes = {p.mode for _, sub in self.branches for p in sub}
        if "sampled" in modes:
            return "sampled"
        return "grid" if "grid" in modes else "neutral"

    @property
    def is_fixed(self) -> bool:
        return self.kind == "value"

    def grid_options(self) -> list[dict]:
        """Every setting this key (and, for conditionals, its branch params) takes in a grid."""
        if self.kind in ("grid", "value"):
            return [{self.key: v} for v in self.values]
        if self.kind == "conditional":
            out = []
            for value, sub in self.branches:
                for combo in _product([p.grid_options() for p in sub]):
                    out.append({self.key: value, **combo})
            return out
        raise SpaceError(f"'{self.key}' is sampled ({self.kind}), not a grid")

    def suggest(self, trial) -> dict:
        """Optuna define-by-run: suggest this key (and its branch's params) on ``trial``."""
        if self.kind == "value":
            return {self.key: self.values[0]}
        if self.kind == "uniform":
            return {self.key: trial.suggest_float(self.key, self.low, self.high, step=self.step)}
        if self.kind == "loguniform":
            return {self.key: trial.suggest_float(self.key, self.low, self.high, log=True)}
        if self.kind == "int":
            return {self.key: trial.suggest_int(self.key, self.low, self.high, step=self.step or 1)}
        if self.kind in ("choice", "grid"):
            return {self.key: trial.suggest_categorical(self.key, list(self.values))}
        # conditional: draw the branch, then only that branch's params
        branch_values = [v for v, _ in self.branches]
        chosen = trial.suggest_categorical(self.key, branch_values)
        out = {self.key: chosen}
        for p in dict(self.branches)[chosen]:
            out.update(p.suggest(trial))
        return out

    def draw(self, rng: random.Random, corner_bias: float = 0.0) -> dict:
        """A random setting without Optuna; with ``corner_bias`` p, numeric keys sit at low or
        high with probability p (used to smoke-test cross-field constraints)."""
        if self.kind == "value":
            return {self.key: self.values[0]}
        if self.kind in ("choice", "grid"):
            return {self.key: rng.choice(self.values)}
        if self.kind == "conditional":
            chosen, sub = rng.choice(self.branches)
            out = {self.key: chosen}
            for p in sub:
                out.update(p.draw(rng, corner_bias))
            return out
        if rng.random() < corner_bias:
            return {self.key: rng.choice([self.low, self.high])}
        if self.kind == "int":
            step = self.step or 1
            return {self.key: self.low + step * rng.randint(0, (self.high - self.low) // step)}
        if self.kind == "loguniform":
            return {self.key: math.exp(rng.uniform(math.log(self.low), math.log(self.high)))}
        if self.step:
            n = round((self.high - self.low) / self.step)
            return {self.key: self.low + self.step * rng.randint(0, n)}
        return {self.key: rng.uniform(self.low, self.high)}

    def keys(self) -> list[str]:
        out = [self.key]
        for _, sub in self.branches:
            for p in sub:
                out += p.keys()
        return out


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space loaded from ``path`` (see the module docstring for the schema)."""

    path: str
    params: tuple[Param, ...]
    points: tuple[dict, ...] = ()
    objective: str | None = None
    method: str | None = None
    description: str = ""
    _keys: tuple[str, ...] = field(default=(), repr=False)

    # ------------------------------------------------------------------ structure

    @property
    def is_grid(self) -> bool:
        """True when the space is an exhaustive grid: ``grid_points`` and/or params that are all
        ``grid``, fixed values or conditionals over such branches (an all-fixed space is a grid of 1)."""
        return bool(self.points) or all(p.mode != "sampled" for p in self.params)

    def keys(self) -> list[str]:
        """Every dotted config path this space may set, in file order."""
        return list(self._keys)

    @property
    def touches_pretraining(self) -> bool:
        """True when some key acts during pre-training, so a trial must pre-train to see its effect."""
        return any(not k.startswith(FINETUNE_ONLY_PREFIXES) for k in self._keys)

    # ------------------------------------------------------------------ grids

    def grid_points(self) -> list[dict]:
        """The exact list of settings of a grid space: ``grid_points`` x each grid param (file order)."""
        if not self.is_grid:
            raise SpaceError(f"{self.path}: not a grid space (it samples {self._sampled_keys()}); use define_by_run")
        base = [dict(p) for p in self.points] or [{}]
        options = [p.grid_options() for p in self.params]
        return [{**point, **combo} for point in base for combo in _product(options)]

    @property
    def num_grid_points(self) -> int:
        """How many settings :meth:`grid_points` enumerates; 0 for a sampled space."""
        return len(self.grid_points()) if self.is_grid else 0

    # ------------------------------------------------------------------ sampling

    def define_by_run(self, trial) -> dict:
        """Optuna define-by-run: suggest every sampled key on ``trial`` and return the full flat
        ``{dotted key: value}`` dict (fixed values included; conditional params only under the
        drawn branch). Product grids are suggested as categoricals; an explicit ``grid_points``
        list cannot be, so it raises SpaceError (enumerate it with :meth:`grid_points`)."""
        if self.points:
            raise SpaceError(
                f"{self.path}: an explicit grid_points list is enumerated, not sampled; "
                "run grid_points() through Tune's grid_search instead of OptunaSearch"
            )
        out: dict = {}
        for p in self.params:
            out.update(p.suggest(trial))
        return out

    def sample(self, rng: random.Random, corner_bias: float = 0.0) -> dict:
        """One random setting without Optuna (a random grid point for grid spaces)."""
        if self.is_grid:
            return dict(rng.choice(self.grid_points()))
        out: dict = {}
        for p in self.params:
            out.update(p.draw(rng, corner_bias))
        return out

    def validate_against(self, cfg: Config, samples: int = 64, seed: int = 0) -> None:
        """Apply every grid point (grid spaces) or ``samples`` corner-biased random draws to ``cfg``
        and run the config's cross-field checks; raises SpaceError naming the failing setting.

        Random draws are a smoke test, not a proof: keep constrained ranges disjoint in the file."""
        if self.is_grid:
            settings = self.grid_points()
        else:
            rng = random.Random(seed)
            settings = [self.sample(rng, corner_bias=0.5) for _ in range(samples)]
        for params in settings:
            try:
                apply_params(cfg, params)
            except ConfigError as e:
                raise SpaceError(f"{self.path}: setting {params} is not a valid config: {e}") from None

    def _sampled_keys(self) -> list[str]:
        return [p.key for p in self.params if p.mode == "sampled"]


def apply_params(cfg: Config, params: dict) -> Config:
    """A copy of ``cfg`` with ``params`` (dotted path -> value) set and validated.

    Raises ConfigError (unknown key, value out of range, or a cross-field constraint)."""
    return with_values(copy.deepcopy(cfg), params)


# --------------------------------------------------------------------------- loading


SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"  # shipped with the package


def space_names() -> list[str]:
    """The search spaces that ship with raymmr (``--space NAME``)."""
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (schema in the module docstring), or a shipped
    space by name (``loss_weights`` is ``raymmr/search_spaces/loss_weights.yaml``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and path.name == str(path) and path.name in space_names():
        path = SPACE_DIR / f"{path.name}.yaml"
    where = str(path)
    if not path.exists():
        raise SpaceError(f"{where}: search-space file does not exist (shipped spaces, by name: {', '.join(space_names())})")
    try:
        data = yaml.load(path.read_text(), Loader=CoreLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpaceError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"{where}: a search space must be a mapping with 'params' and/or 'grid_points'")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SpaceError(f"{where}: unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")

    objective = data.get("objective")
    if objective is not None:
        try:
            objective = check_value("tune.objective", objective)
        except ConfigError as e:
            raise SpaceError(f"{where}: objective: {e}") from None

    method = data.get("method")
    if method is not None and method not in METHODS:
        raise SpaceError(f"{where}: method: '{method}' is not a method; choose one of {list(METHODS)}")

    raw_params = data.get("params") or {}
    raw_points = data.get("grid_points") or []
    if not isinstance(raw_params, dict):
        raise SpaceError(f"{where}: 'params' must be a mapping of dotted config keys to specs")
    if not isinstance(raw_points, list):
        raise SpaceError(f"{where}: 'grid_points' must be a list of mappings")
    if not raw_params and not raw_points:
        raise SpaceError(f"{where}: empty search space; give 'params' and/or 'grid_points'")

    seen: set[str] = set()
    params = _parse_params(raw_params, where, seen, context="params")
    points = _parse_points(raw_points, where, seen) if "grid_points" in data else ()
    if "grid_points" in data and not points:
        raise SpaceError(f"{where}: 'grid_points' is an empty list")

    if objective == "pretrain":
        ft = [k for k in sorted(seen) if k.startswith(FINETUNE_ONLY_PREFIXES)]
        if ft:
            raise SpaceError(f"{where}: key(s) {ft}: fine-tuning settings have no effect with objective: pretrain")

    for p in params:
        _check_modes(p, where)
    grid_keys = [p.key for p in params if p.mode == "grid"] + (["grid_points"] if points else [])
    sampled = [p.key for p in params if p.mode == "sampled"]
    if sampled and grid_keys:
        raise SpaceError(
            f"{where}: key(s) {sampled} are sampled but {grid_keys} form a grid; a space is either a grid "
            "or sampled (use 'choice' instead of 'grid' to sample a categorical)"
        )

    space = SearchSpace(
        path=where,
        params=params,
        points=points,
        objective=objective,
        method=method,
        description=str(data.get("description") or ""),
        _keys=tuple(_key_order(params, points)),
    )
    if space.is_grid:
        pts = space.grid_points()
        dups = [p for i, p in enumerate(pts) if p in pts[:i]]
        if dups:
            raise SpaceError(f"{where}: grid enumerates the setting {dups[0]} more than once")
    return space


def _key_order(params: tuple[Param, ...], points: tuple[dict, ...]) -> list[str]:
    out: list[str] = []
    for p in params:
        out += p.keys()
    for point in points:
        out += [k for k in point if k not in out]
    return out


def _check_modes(p: Param, where: str) -> None:
    """A conditional may not mix 'grid' and sampled params below it (at any depth)."""
    if p.kind != "conditional":
        return
    modes = {q.mode for _, sub in p.branches for q in sub}
    if {"grid", "sampled"} <= modes:
        raise SpaceError(f"{where}: key '{p.key}': a conditional mixes 'grid' and sampled branch params")
    for _, sub in p.branches:
        for q in sub:
            _check_modes(q, where)


def _parse_params(raw: dict, where: str, seen: set[str], context: str) -> tuple[Param, ...]:
    return tuple(_parse_param(key, spec, where, seen, context) for key, spec in raw.items())


def _check_key(key: Any, where: str, seen: set[str]) -> tuple[type, str]:
    if not isinstance(key, str):
        raise SpaceError(f"{where}: key {key!r} must be a dotted config path string like 'loss.w_img'")
    try:
        f, typ = field_spec(key)
    except ConfigError as e:
        raise SpaceError(f"{where}: key '{key}': {e}") from None
    if key.startswith("tune."):
        raise SpaceError(f"{where}: key '{key}': tune.* settings configure the sweep itself and cannot be searched")
    if key in seen:
        raise SpaceError(f"{where}: key '{key}' appears more than once; each key may be set in one place only")
    seen.add(key)
    return typ, key


def _check(key: str, value: Any, where: str, what: str = "value") -> Any:
    try:
        return check_value(key, value)
    except ConfigError as e:
        raise SpaceError(f"{where}: key '{key}': {what} {value!r}: {e}") from None


def _bounds(key: str, kind: str, spec: dict, where: str) -> tuple[Any, Any]:
    rng = spec[kind]
    if not isinstance(rng, list) or len(rng) != 2:
        raise SpaceError(f"{where}: key '{key}': {kind} takes [low, high], got {rng!r}")
    low, high = rng
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpaceError(f"{where}: key '{key}': {kind} bounds must be numbers, got {v!r}")
        if kind == "int" and not float(v).is_integer():
            raise SpaceError(f"{where}: key '{key}': int bounds must be integers, got {v!r}")
    if low > high:
        raise SpaceError(f"{where}: key '{key}': low > high in {kind}: [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: key '{key}': loguniform needs low > 0, got {low}")
    low, high = _check(key, low, where, "low bound"), _check(key, high, where, "high bound")
    return low, high


def _parse_param(key: Any, spec: Any, where: str, seen: set[str], context: str) -> Param:
    typ, key = _check_key(key, where, seen)
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            raise SpaceError(
                f"{where}: key '{key}': a bare list is ambiguous; write {{choice: [...]}}, {{grid: [...]}} or {{value: [...]}}"
            )
        return Param(key, "value", values=(_check(key, spec, where),))
    kinds = [k for k in spec if k in ALL_KINDS]
    extra = [k for k in spec if k not in ALL_KINDS and k != "step"]
    if len(kinds) != 1 or extra:
        bad = extra or kinds or list(spec)
        raise SpaceError(
            f"{where}: key '{key}': unknown or ambiguous distribution {bad}; a spec has exactly one of {list(ALL_KINDS)}"
            " (plus 'step' for uniform/int)"
        )
    kind = kinds[0]
    if "step" in spec and kind not in ("uniform", "int"):
        raise SpaceError(f"{where}: key '{key}': 'step' is only allowed with uniform or int")

    if kind in ("uniform", "loguniform", "int"):
        want = int if kind == "int" else float
        if typ is not want:
            hint = "int" if typ is int else "uniform/loguniform" if typ is float else "choice, grid or a fixed value"
            raise SpaceError(f"{where}: key '{key}' is a {typ.__name__} field; {kind} does not apply (use {hint})")
        low, high = _bounds(key, kind, spec, where)
        step = spec.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise SpaceError(f"{where}: key '{key}': step must be a positive number, got {step!r}")
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9:
                raise SpaceError(f"{where}: key '{key}': (high - low) = {high - low} is not a multiple of step {step}")
            step = int(step) if kind == "int" else float(step)
        return Param(key, kind, low=low, high=high, step=step)

    if kind == "value":
        return Param(key, "value", values=(_check(key, spec["value"], where),))

    if kind in ("choice", "grid"):
        values = spec[kind]
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: key '{key}': {kind} needs a non-empty list of values, got {values!r}")
        clean = tuple(_check(key, v, where) for v in values)
        if len(set(map(repr, clean))) != len(clean):
            raise SpaceError(f"{where}: key '{key}': {kind} lists a value twice: {list(clean)}")
        return Param(key, kind, values=clean)

    # conditional
    branches_raw = spec["conditional"]
    if not isinstance(branches_raw, dict) or not branches_raw:
        raise SpaceError(f"{where}: key '{key}': conditional needs a non-empty mapping of branch value -> params")
    branches = []
    for value, sub in branches_raw.items():
        clean = _check(key, value, where, "branch")
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise SpaceError(f"{where}: key '{key}': branch {value!r} must map dotted keys to specs, got {sub!r}")
        branches.append((clean, _parse_params(sub, where, seen, context=f"{key}={value}")))
    if len({repr(v) for v, _ in branches}) != len(branches):
        raise SpaceError(f"{where}: key '{key}': conditional lists a branch twice")
    return Param(key, "conditional", branches=tuple(branches))


def _parse_points(raw: list, where: str, seen: set[str]) -> tuple[dict, ...]:
    points = []
    own: set[str] = set()
    for i, point in enumerate(raw):
        if not isinstance(point, dict) or not point:
            raise SpaceError(f"{where}: grid_points[{i}] must be a non-empty mapping of dotted keys to values")
        clean = {}
        for key, value in point.items():
            if key not in own:
                _check_key(key, where, seen)
                own.add(key)
            if isinstance(value, dict):
                raise SpaceError(f"{where}: grid_points[{i}] key '{key}': a grid point holds plain values, not specs")
            clean[key] = _check(key, value, where, f"grid_points[{i}] value")
        points.append(clean)
    return tuple(points)


def _product(option_lists: list[list[dict]]) -> list[dict]:
    out = []
    for combo in itertools.product(*option_lists):
        merged: dict = {}
        for part in combo:
            merged.update(part)
        out.append(merged)
    return out
