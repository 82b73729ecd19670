"""Choices are made on validation, never on test (docs/SPEC.md §5, DomainBed): no pipeline, demo, ablation or
sweep code path reads the test split for a choice; the test split is evaluated only where the
caller declares its choices fixed, and last."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

import raymmr
from raymmr.config import load_config

PACKAGE = Path(raymmr.__file__).parent


@pytest.fixture
def recorded(monkeypatch):
    """run_pipeline with training and evaluation replaced by recorders."""
    import raymmr.eval.evaluate
    import raymmr.train.launch

    calls = []

    def fake_training(cfg, *, stage, out, **_):
        calls.append(("train", stage, cfg.data.blank_images))
        return SimpleNamespace(export_dir=f"{out}/export")

    def fake_evaluate(export_dir, data, out, *, split, role, blank_export=None, **_):
        calls.append(("evaluate", split, role, blank_export))
        return {"split": split, "role": role}

    monkeypatch.setattr(raymmr.train.launch, "run_training", fake_training)
    monkeypatch.setattr(raymmr.eval.evaluate, "evaluate", fake_evaluate)
    return calls


def test_the_pipeline_evaluates_validation_and_test_only_once_choices_are_fixed(recorded, tmp_path):
    from raymmr.pipeline import run_pipeline

    cfg = load_config("tiny")
    results = run_pipeline(cfg, tmp_path, "data", log=lambda _: None)
    assert list(results) == ["val"]
    assert [c for c in recorded if c[0] == "evaluate"] == [
        ("evaluate", "val", "selection", str(tmp_path / "finetune_text_only" / "export"))]
    # The text-only model: the same pre-training fine-tuned on blank images.
    assert [c for c in recorded if c[0] == "train"] == [("train", "pretrain", False), ("train", "finetune", False),
                                                        ("train", "finetune", True)]
    recorded.clear()
    results = run_pipeline(cfg, tmp_path, "data", pretrained="pt", text_only=False, final_test=True,
                           log=lambda _: None)
    assert list(results) == ["val", "test"]
    assert [c[1:3] for c in recorded if c[0] == "evaluate"] == [("val", "selection"), ("test", "final")]
    assert [c for c in recorded if c[0] == "train"] == [("train", "finetune", False)]


def _mentions_test_split(path: Path) -> list[str]:
    """Where a module names the test split: the string "test" or the pipeline's FINAL_SPLIT, or
    asks the pipeline for its final evaluation (final_test=True)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value == "test":
            found.append(f"{path.name}:{node.lineno} 'test'")
        elif isinstance(node, ast.Name) and node.id == "FINAL_SPLIT" or isinstance(node, ast.alias) and \
                node.name == "FINAL_SPLIT":
            found.append(f"{path.name}:{getattr(node, 'lineno', '?')} FINAL_SPLIT")
        elif isinstance(node, ast.keyword) and node.arg == "final_test" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append(f"{path.name}:{node.lineno} final_test")
    return found


def test_only_the_final_evaluation_names_the_test_split():
    """The sweep (trials, report, best config), the ablation, training and validation never name the
    test split; the pipeline names it for its final evaluation, the demo asks for that evaluation
    once its preset's choices are fixed, and the evaluate job lets a user pick any split."""
    allowed = {
        "pipeline.py": 3,  # FINAL_SPLIT = "test", used once, behind final_test
        "jobs/demo.py": 2,  # final_test=True, and printing the test results it produced
        "jobs/evaluate.py": 1,  # --split default: the user's own evaluation
        # final_test=True and printing its results: the sweep's confirmed choice, once the
        # confirmation (raymmr.confirm, validation only) has fixed it
        "sweep.py": 3,
        "eval/evaluate.py": None,  # evaluates whatever split it is given
    }
    data_making = ("data/making/synthrad.py", "data/making/foreign.py", "data/making/converters/")  # writing the split, not reading it
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(data_making) or rel in allowed and allowed[rel] is None:
            continue
        found = _mentions_test_split(path)
        if rel in allowed:
            assert len(found) <= allowed[rel], found
        else:
            offenders += found
    assert not offenders, f"code paths that name the test split: {offenders}"
    assert _mentions_test_split(PACKAGE / "tune" / "runner.py") == []  # the scan sees the sweep


def test_the_scan_catches_a_path_that_reads_test(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from raymmr.pipeline import FINAL_SPLIT, run_pipeline\n"
                   "run_pipeline(cfg, out, data, final_test=True)\nurls = shard_urls(data, 'test')\n")
    assert len(_mentions_test_split(bad)) == 3  # the import, the call's flag, the literal


def test_a_runs_seed_varies_its_data_order_not_only_its_initialisation(tiny_data):
    """Seeds must vary data order and perturbation draws, or their spread underestimates the
    run-to-run spread; the data itself (data.seed) stays the same."""
    from raymmr.data.loader import make_loader
    from raymmr.data.shards import read_manifest, shard_tokenizer, shard_urls
    from raymmr.data.tokenizer import load_tokenizer
    from raymmr.train.setup import stream_seed

    manifest = read_manifest(tiny_data)
    tokenizer = load_tokenizer(shard_tokenizer(tiny_data))

    def first_keys(train_seed):
        cfg = load_config("tiny", [f"train.seed={train_seed}"])
        loader = make_loader(shard_urls(tiny_data, "train"), tokenizer=tokenizer, answers=manifest["answers"],
                             max_text_len=32, batch_size=8, rank=0, world_size=1, epoch_mode="resampled",
                             samples_per_epoch=64, shuffle_buffer=50, loader_workers=0, seed=stream_seed(cfg), epoch=0,
                             perturbation=cfg.perturbation, image_size=64, manifest=manifest)
        return [k for batch in loader for k in batch["key"]]

    assert stream_seed(load_config("tiny")) == load_config("tiny").data.seed  # seed 0: the stream as before
    assert first_keys(0) == first_keys(0)
    assert first_keys(0) != first_keys(1)
