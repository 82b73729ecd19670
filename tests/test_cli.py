"""The installed `raymmr` command: a wheel of this checkout, installed in a fresh venv, works from
any directory, with the search spaces inside the package."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the raymmr wheel; its dependencies come from the test
    environment's site-packages (PYTHONPATH), so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("cli")
    # Build from a copy: setuptools writes build/ beside the sources, which must not land in the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT / "raymmr", src / "raymmr", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "dist").glob("raymmr-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=300)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp / "venv" / "bin" / "python"),
                              "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {"PATH": f"{tmp / 'venv' / 'bin'}:/usr/bin:/bin", "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "HOME": str(tmp)}
    away = tmp / "elsewhere"
    away.mkdir()
    return lambda *args: subprocess.run(list(args), cwd=away, env=env, capture_output=True, text=True, timeout=300)


def test_installed_command_runs_from_any_directory(installed):
    from raymmr import __version__

    version = installed("raymmr", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"raymmr {__version__}", version.stderr
    demo = installed("raymmr", "demo", "--help")
    assert demo.returncode == 0 and "usage: raymmr demo" in demo.stdout, demo.stderr[-2000:]
    tune = installed("raymmr", "tune", "--space", "loss_weights", "--help")
    assert tune.returncode == 0 and "usage: raymmr tune" in tune.stdout, tune.stderr[-2000:]
    unknown = installed("raymmr", "pretrian")
    assert unknown.returncode == 2 and "unknown command 'pretrian'" in unknown.stderr
    # The package imported is the installed wheel, and the shipped spaces load by name from it.
    where = installed("python", "-c", "import raymmr, raymmr.tune.space as s; print(raymmr.__file__); "
                      "print(s.load_space('loss_weights').params and 'ok')")
    assert where.returncode == 0, where.stderr[-2000:]
    path, ok = where.stdout.split()
    assert "/venv/" in path and ok == "ok", where.stdout


def test_a_shipped_space_loads_by_name_and_an_unknown_name_lists_them():
    from raymmr.tune.space import SpaceError, load_space, space_names

    assert {"loss_weights", "mask_ratios", "cmdpi_table5"} <= set(space_names())
    assert load_space("loss_weights").params == load_space(ROOT / "search_spaces" / "loss_weights.yaml").params
    with pytest.raises(SpaceError, match="shipped spaces, by name: .*loss_weights"):
        load_space("loss_weight")
