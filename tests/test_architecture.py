"""The floors of ARCHITECTURE.md, held against the code: every module of raymmr sits on one
floor, and a module imports only from its own floor and the floors below it (no upward import,
none between two floors of the same height), with no import cycle inside a floor. Imports inside
functions count (a lazy import is still a dependency), ``from raymmr import x`` is an import of
``raymmr.x``, and ``importlib.import_module`` is an import like any other. Every rule has a case
below that shows it catching a violation: a check that cannot fail proves nothing."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raymmr"

# Bottom to top; floors on one line are of the same height and import neither way.
FLOORS = [
    {"foundation": {"__init__", "config", "errors", "storage", "rundir", "perturb"}},
    {"data": {"data"}},
    {"model": {"model"}},
    {"objective": {"objective"}, "serve": {"serve"}},
    {"eval": {"eval"}},
    {"train": {"train"}},
    {"tune": {"tune"}, "pipeline": {"pipeline"}},
    {"ablation": {"ablation"}, "confirm": {"confirm"}},
    {"sweep": {"sweep"}},
    {"cli": {"cli"}},
    {"jobs": {"jobs"}},
]
HEIGHT = {floor: h for h, level in enumerate(FLOORS) for floor in level}
FLOOR_OF = {part: floor for level in FLOORS for floor, parts in level.items() for part in parts}

# Third-party packages a floor must not import ("model knows nothing of Ray, DeepSpeed, shards or
# search; objective nothing of Ray or DeepSpeed").
FORBIDDEN = {
    "model": {"ray", "deepspeed", "webdataset", "optuna"},
    "objective": {"ray", "deepspeed"},
}

# What a scan of the real tree must find at least (a moved or renamed package scans nothing and
# would pass every other rule).
MIN_MODULES = 60
KNOWN_IMPORTS = [
    ("raymmr.model.model", "raymmr.model.export"),  # a top-level import
    ("raymmr.train.launch", "raymmr.model.export"),  # an import inside a function
    ("raymmr.data.shards", "raymmr.storage"),  # `from raymmr import storage`
    ("raymmr.jobs", "raymmr.jobs.*"),  # importlib.import_module(f"raymmr.jobs.{...}")
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path = ROOT) -> bool:
    """Whether ``name`` (raymmr.x.y) is a module or package of the tree under ``root``."""
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def dynamic_target(call: ast.Call) -> str | None:
    """The module an ``importlib.import_module(...)`` / ``__import__(...)`` call loads: its constant
    name, or for an f-string any module under its constant prefix (``f"raymmr.jobs.{x}"`` ->
    raymmr.jobs.*); "?" when the name is not written in the call; None for any other call."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return prefix.rsplit(".", 1)[0] + ".*" if "." in prefix else "?"
    return "?"


def imports_of(source: str, name: str, *, is_package: bool = False, root: Path = ROOT) -> tuple[set[str], set[str]]:
    """-> (the raymmr modules ``source`` imports at any depth, the third-party top-level packages it
    imports). ``from raymmr.x import y`` is raymmr.x.y when y is a module, else raymmr.x; a dynamic
    import whose name the code does not spell out is ``?``."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found, outside = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "raymmr" or module.startswith("raymmr."):
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    found.add(sub if is_module(sub, root) else module)
            elif not node.level:
                outside.add(module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                (found if alias.name.split(".")[0] == "raymmr" else outside).add(
                    alias.name if alias.name.split(".")[0] == "raymmr" else alias.name.split(".")[0])
        elif isinstance(node, ast.Call):
            target = dynamic_target(node)
            if target == "?" or (target and target.split(".")[0] == "raymmr"):
                found.add(target)
            elif target:
                outside.add(target.split(".")[0])
    return found, outside


def scan(package: Path = PACKAGE) -> dict[str, tuple[set[str], set[str]]]:
    """Every module under ``package`` -> imports_of(it)."""
    root = package.parent
    return {module_name(p, root): imports_of(p.read_text(), module_name(p, root), is_package=p.name == "__init__.py",
                                             root=root)
            for p in sorted(package.rglob("*.py"))}  # fmt: skip


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return FLOOR_OF.get(parts[1] if len(parts) > 1 else "__init__")


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Each import that goes up a floor or across to a floor of the same height, or whose module
    the code does not name, as one line."""
    out = []
    for module, targets in sorted(imports.items()):
        here = floor_of(module)
        for target in sorted(targets):
            if target == "?":
                out.append(f"{module} ({here}) imports a module whose name is computed: write it out, so "
                           "that this check can follow it")
                continue
            there = floor_of(target)
            if there is None or there == here:
                continue
            if HEIGHT[there] > HEIGHT[here]:
                out.append(f"{module} ({here}) imports {target} ({there}): up a floor")
            elif HEIGHT[there] == HEIGHT[here]:
                out.append(f"{module} ({here}) imports {target} ({there}): across floors of one height")
    return out


def forbidden_imports(outside: dict[str, set[str]]) -> list[str]:
    """Each third-party package a floor must not import (``FORBIDDEN``), as one line."""
    return [f"{module} ({floor_of(module)}) imports {package}"
            for module, packages in sorted(outside.items())
            for package in sorted(packages & FORBIDDEN.get(floor_of(module), set()))]  # fmt: skip


# Inside the data floor: the training-time stream never imports the offline making of shard sets
# (generators, converters, the writer, the indexer of foreign sets, validation). The loader
# benchmark (data.benchmark) makes the shards it streams, so it stands apart from both.
MAKING = "raymmr.data.making"
NOT_STREAM = (MAKING, "raymmr.data.benchmark")


def stream_imports_making(imports: dict[str, set[str]]) -> list[str]:
    """Each import of ``raymmr.data.making`` by a streaming module of ``raymmr.data``, as one line."""
    return [f"{module} (the training-time stream) imports {target} (making shard sets)"
            for module, targets in sorted(imports.items())
            if module.startswith("raymmr.data") and not module.startswith(NOT_STREAM)
            for target in sorted(targets) if target == MAKING or target.startswith(MAKING + ".")]  # fmt: skip


def cycles_inside_floors(imports: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the modules of one floor (strongly connected components of more
    than one module, or a module importing itself), each as a sorted list."""
    graph = {m: {t for t in targets if t in imports and t != "?" and floor_of(t) == floor_of(m)}
             for m, targets in imports.items()}  # fmt: skip
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def documented_floors(text: str) -> list[dict[str, set[str]]]:
    """ARCHITECTURE.md's floor table, bottom to top, in FLOORS' shape: each row's floors (first
    column) with the modules and packages of its second column (``x.py`` -> x, ``x/`` -> x; a
    pattern such as ``jobs/*.py`` is a note, not a place)."""
    section = text.split("## The floors", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        floors = re.findall(r"`([^`]+)`", cells[0])
        places = [p.removesuffix("/").removesuffix(".py") for p in re.findall(r"`([^`*]+(?:/|\.py))`", cells[1])]
        if len(floors) == 1:
            rows.append({floors[0]: set(places)})
        else:  # one place per floor, in order
            rows.append({floor: {place} for floor, place in zip(floors, places, strict=True)})
    return rows


def test_every_module_sits_on_a_floor():
    unplaced = sorted(m for m in scan() if floor_of(m) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS here and to ARCHITECTURE.md): {unplaced}"


def test_architecture_md_has_the_same_floors_as_this_test():
    assert documented_floors((ROOT / "ARCHITECTURE.md").read_text()) == FLOORS


def test_the_scan_reads_the_tree_it_should():
    found = scan()
    assert len(found) >= MIN_MODULES, f"scanned {len(found)} modules under {PACKAGE}: has the package moved?"
    for module, target in KNOWN_IMPORTS:
        assert target in found[module][0], f"the scan no longer sees {module} import {target}"
    assert "torch" in found["raymmr.model.model"][1]


def test_imports_go_down_the_floors_only():
    found = violations({m: raymmr for m, (raymmr, _) in scan().items()})
    assert not found, "\n".join(found)


def test_no_import_cycle_inside_a_floor():
    found = cycles_inside_floors({m: raymmr for m, (raymmr, _) in scan().items()})
    assert not found, found


def test_the_data_stream_does_not_import_the_making_of_data():
    found = stream_imports_making({m: raymmr for m, (raymmr, _) in scan().items()})
    assert not found, "\n".join(found)
    assert any(m.startswith(MAKING + ".") for m in scan()), "the scan sees no module of raymmr.data.making"


def test_model_and_objective_import_no_ray_deepspeed_shards_or_search():
    found = forbidden_imports({m: outside for m, (_, outside) in scan().items()})
    assert not found, "\n".join(found)


# --- each rule catches its violation ------------------------------------------------------------


@pytest.mark.parametrize(("module", "target", "says"), [
    ("raymmr.model.model", "raymmr.objective.task", "up a floor"),
    ("raymmr.data.loader", "raymmr.train.setup", "up a floor"),
    ("raymmr.serve.predictor", "raymmr.objective.losses", "across floors of one height"),
    ("raymmr.config", "raymmr.cli", "up a floor"),
])  # fmt: skip
def test_the_check_catches_an_upward_or_sideways_import(module, target, says):
    assert violations({module: {target}}) == [
        f"{module} ({floor_of(module)}) imports {target} ({floor_of(target)}): {says}"]
    assert violations({target: {module}}) == [] or says.startswith("across")


@pytest.mark.parametrize(("source", "module", "target"), [
    ("from raymmr import train\n", "raymmr.model.model", "raymmr.train"),
    ("def f():\n    from raymmr.train import launch\n", "raymmr.model.model", "raymmr.train.launch"),
    ("import importlib\nimportlib.import_module(f'raymmr.jobs.{name}')\n", "raymmr.cli", "raymmr.jobs.*"),
    ("from importlib import import_module\nimport_module('raymmr.tune.runner')\n", "raymmr.eval.metrics",
     "raymmr.tune.runner"),
    ("from ..train import launch\n", "raymmr.model.model", "raymmr.train.launch"),
])  # fmt: skip
def test_every_way_of_importing_is_seen(source, module, target):
    raymmr_imports, _ = imports_of(source, module)
    assert target in raymmr_imports
    assert violations({module: raymmr_imports}), f"{source!r} in {module} passed"


def test_an_import_whose_name_is_computed_is_refused():
    raymmr_imports, _ = imports_of("import importlib\nimportlib.import_module(name)\n", "raymmr.cli")
    assert raymmr_imports == {"?"}
    assert "name is computed" in violations({"raymmr.cli": raymmr_imports})[0]


def test_a_cycle_inside_a_floor_is_found_and_a_chain_is_not():
    assert cycles_inside_floors({"raymmr.model.model": {"raymmr.model.export"},
                                 "raymmr.model.export": {"raymmr.model.model", "raymmr.config"},
                                 "raymmr.config": set()}) == [["raymmr.model.export", "raymmr.model.model"]]
    assert cycles_inside_floors({"raymmr.model.model": {"raymmr.model.export"}, "raymmr.model.export": set()}) == []
    # a cycle across floors is the upward import's business, not this rule's
    assert cycles_inside_floors({"raymmr.data.shards": {"raymmr.storage"}, "raymmr.storage": {"raymmr.data.shards"}}) == []


@pytest.mark.parametrize(("module", "source"), [
    ("raymmr.model.model", "import ray\n"),
    ("raymmr.model.encoders", "def f():\n    from deepspeed.ops import adam\n"),
    ("raymmr.objective.task", "import ray.train\n"),
    ("raymmr.model.export", "import importlib\nimportlib.import_module('deepspeed')\n"),
])  # fmt: skip
def test_ray_or_deepspeed_in_model_or_objective_is_caught(module, source):
    _, outside = imports_of(source, module)
    assert forbidden_imports({module: outside})
    assert not forbidden_imports({"raymmr.train.worker": outside})


def test_a_moved_package_scans_nothing_and_the_check_sees_it(tmp_path):
    (tmp_path / "raymmr").mkdir()
    found = scan(tmp_path / "raymmr")
    assert len(found) < MIN_MODULES
    (tmp_path / "raymmr" / "__init__.py").write_text("")
    (tmp_path / "raymmr" / "storage.py").write_text("")
    (tmp_path / "raymmr" / "config.py").write_text("from raymmr import storage\n")
    assert scan(tmp_path / "raymmr")["raymmr.config"][0] == {"raymmr.storage"}  # resolved in that tree


def test_a_floor_table_that_differs_from_the_test_is_seen():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert documented_floors(text.replace("`tune/`, `pipeline.py`", "`pipeline.py`, `tune/`")) != FLOORS
    assert documented_floors(text.replace("`errors.py`, ", "")) != FLOORS
    moved = text.replace("| `ablation`, `confirm` |", "| `confirm`, `ablation` |")
    assert documented_floors(moved) != FLOORS


def test_a_stream_module_importing_the_making_of_data_is_caught():
    assert stream_imports_making({"raymmr.data.loader": {"raymmr.data.making.writer"}})
    assert stream_imports_making({"raymmr.data.tario": {"raymmr.data.making"}})
    assert not stream_imports_making({"raymmr.data.making.sets": {"raymmr.data.making.writer"},
                                      "raymmr.data.benchmark": {"raymmr.data.making.writer"},
                                      "raymmr.pipeline": {"raymmr.data.making.sets"}})
