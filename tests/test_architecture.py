"""The floors of ARCHITECTURE.md, held against the code: every module of raymmr sits on one
floor, and a module imports only from its own floor and the floors below it (no upward import,
none between two floors of the same height, so no cycle between floors). Imports inside
functions count too: a lazy import is still a dependency."""

import ast
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
    {"cli": {"cli"}},
    {"jobs": {"jobs"}},
]
HEIGHT = {floor: h for h, level in enumerate(FLOORS) for floor in level}
FLOOR_OF = {part: floor for level in FLOORS for floor, parts in level.items() for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The raymmr modules ``path`` imports, at any depth (``from raymmr.x import y`` -> raymmr.x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "raymmr" or m.startswith("raymmr.")}


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return FLOOR_OF.get(parts[1] if len(parts) > 1 else "__init__")


def violations(imports: dict[str, set[str]]) -> list[str]:
    """Each import that goes up a floor or across to a floor of the same height, as one line."""
    out = []
    for module, targets in sorted(imports.items()):
        here = floor_of(module)
        for target in sorted(targets):
            there = floor_of(target)
            if there is None or there == here:
                continue
            if HEIGHT[there] > HEIGHT[here]:
                out.append(f"{module} ({here}) imports {target} ({there}): up a floor")
            elif HEIGHT[there] == HEIGHT[here]:
                out.append(f"{module} ({here}) imports {target} ({there}): across floors of one height")
    return out


def package_imports() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_on_a_floor_that_architecture_md_names():
    unplaced = sorted(m for m in package_imports() if floor_of(m) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS here and to ARCHITECTURE.md): {unplaced}"
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert all(f"`{floor}`" in text for floor in HEIGHT), [f for f in HEIGHT if f"`{f}`" not in text]


def test_imports_go_down_the_floors_only():
    found = violations(package_imports())
    assert not found, "\n".join(found)


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
