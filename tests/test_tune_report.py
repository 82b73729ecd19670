"""raymmr.tune.report: ranking, CSV/Markdown tables, best_config.yaml round trip, importances, plots."""

import csv
import json
import math
import uuid

import optuna
import pytest

from raymmr.config import load_config
from raymmr.tune.report import (
    best_trial,
    param_importances,
    rank_correlation_importances,
    rank_trials,
    write_report,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records():
    return [
        {"trial_id": "a", "params": {"loss.w_img": 0.5, "finetune.mixup_dist": "uniform"}, "objective": 0.61, "iterations": 3, "status": "TERMINATED"},
        {"trial_id": "b", "params": {"loss.w_img": 1.5, "finetune.mixup_dist": "beta", "finetune.mixup_beta_a": 0.4}, "objective": 0.72, "iterations": 3, "status": "TERMINATED"},
        {"trial_id": "c", "params": {"loss.w_img": 1.0, "finetune.mixup_dist": "uniform"}, "objective": 0.55, "iterations": 1, "status": "TERMINATED"},
        {"trial_id": "d", "params": {"loss.w_img": 2.0, "finetune.mixup_dist": "fixed", "finetune.mixup_fixed": 0.3}, "objective": 0.99, "iterations": 1, "status": "ERROR"},
        {"trial_id": "e", "params": {"loss.w_img": 0.75, "finetune.mixup_dist": "uniform"}, "objective": None, "iterations": 0, "status": "ERROR"},
    ]  # fmt: skip


def test_ranking_max_and_min_put_ineligible_trials_last():
    ranked = rank_trials(_records(), mode="max")
    assert [r["trial_id"] for r in ranked] == ["b", "a", "c", "d", "e"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, None, None]  # d errored despite its 0.99
    assert [r["trial_id"] for r in rank_trials(_records(), mode="min")][:3] == ["c", "a", "b"]
    assert best_trial(_records(), "max")["trial_id"] == "b"
    assert best_trial(_records()[3:], "max") is None
    with pytest.raises(ValueError, match="mode"):
        rank_trials(_records(), mode="best")
    with pytest.raises(ValueError, match="lacks"):
        rank_trials([{"trial_id": "x", "params": {}}])


def test_write_report_tables_best_config_and_plots(tmp_path):
    base = load_config("tiny")
    paths = write_report(_records(), tmp_path, base_cfg=base, mode="max", metric="val_vqa_accuracy")

    with open(paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trial_id"] for r in rows] == ["b", "a", "c", "d", "e"]
    assert rows[0]["rank"] == "1" and rows[0]["finetune.mixup_beta_a"] == "0.4"
    assert rows[1]["finetune.mixup_beta_a"] == ""  # not drawn under 'uniform'
    assert rows[4]["objective"] == "" and rows[4]["rank"] == ""

    md = paths["markdown"].read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| rank | trial_id | status | iterations | objective | loss.w_img")
    assert [line.split(" | ")[1] for line in lines[1:]] == ["b", "a", "c", "d", "e"]
    assert "Best: trial `b`" in md and "maximised" in md and "![history](history.png)" in md

    cfg = load_config(str(paths["best_config"]))  # loads as is
    assert cfg.loss.w_img == 1.5 and cfg.finetune.mixup_dist == "beta" and cfg.finetune.mixup_beta_a == 0.4
    assert cfg.model == base.model and cfg.preset == "tiny"
    best = json.loads(paths["best_trial"].read_text())
    assert best["trial_id"] == "b" and best["objective"] == 0.72

    for name in ("history", "importances", "parallel"):
        data = paths[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name


def test_report_without_completed_trials_still_writes_tables_and_plots(tmp_path):
    paths = write_report(_records()[3:], tmp_path, base_cfg=load_config("tiny"))
    assert "best_config" not in paths and not (tmp_path / "best_config.yaml").exists()
    assert "Best: none" in paths["markdown"].read_text()
    for name in ("history", "importances", "parallel"):
        assert paths[name].read_bytes().startswith(PNG_MAGIC)


def test_a_sweep_whose_every_trial_failed_exits_non_zero_naming_them(tmp_path, monkeypatch, capsys):
    """The job writes its report, then fails, naming each trial and its error; one failure among
    finished trials is named without failing the sweep."""
    import raymmr.tune.runner as runner
    from raymmr.errors import JobError
    from raymmr.jobs import tune_loss_weights
    from raymmr.tune.report import check_some_finished

    failed = [{"trial_id": f"t{i}", "params": {"loss.w_img": 1.0}, "objective": None, "iterations": 0,
               "status": "ERROR", "error": f"ShardError: no manifest.json at /cache/{i}"} for i in range(2)]
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: failed)
    monkeypatch.setattr("raymmr.data.making.sets.resolve_data", lambda cfg, data: "unused")
    argv = ["--config", "tiny", "--space", "mask_ratios", "--num-samples", "2", "--out", str(tmp_path / "sweep")]
    with pytest.raises(JobError) as e:
        tune_loss_weights.main(argv)
    assert "no trial of the sweep finished (2 trial(s))" in str(e.value)
    for i in range(2):
        assert f"t{i}: ERROR: ShardError: no manifest.json at /cache/{i}" in str(e.value)
    assert (tmp_path / "sweep" / "trials.md").exists()  # the report is written first
    with pytest.raises(JobError, match="no objective reported"):
        check_some_finished([{**failed[0], "status": "COMPLETED", "error": ""}])
    check_some_finished([*failed, {**failed[0], "trial_id": "ok", "objective": 0.5, "status": "COMPLETED"}])


def test_rank_correlation_fallback():
    records = [
        {"trial_id": str(i), "params": {"x": float(i), "noise": [3.0, 1.0, 4.0, 1.5, 5.0, 9.0][i], "flag": i % 2 == 0}, "objective": float(i), "iterations": 1, "status": "TERMINATED"}
        for i in range(6)
    ]  # fmt: skip
    imp = rank_correlation_importances(records)
    assert list(imp)[0] == "x"  # perfectly monotone
    assert math.isclose(sum(imp.values()), 1.0)
    assert all(0.0 <= v <= 1.0 for v in imp.values())
    imp2, method = param_importances(records, study=None)
    assert imp2 == imp and "rank correlation" in method


def test_optuna_importances_when_a_study_is_given():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: t.suggest_float("loss.w_img", 0.0, 1.0) + 0.01 * t.suggest_float("loss.w_txt", 0.0, 1.0), n_trials=12
    )
    records = [
        {"trial_id": str(t.number), "params": t.params, "objective": t.value, "iterations": 1, "status": "TERMINATED"}
        for t in study.trials
    ]
    imp, method = param_importances(records, study)
    assert method == "optuna PED-ANOVA"
    assert list(imp)[0] == "loss.w_img" and imp["loss.w_img"] > imp["loss.w_txt"]
    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("loss.w_img", 0.0, 1.0), n_trials=1)
    assert "rank correlation" in param_importances(records[:1], single)[1]  # < 2 completed trials


def test_interrupted_trial_stage_resumes_only_from_a_complete_checkpoint(tmp_path):
    import json

    from raymmr.train import checkpoint as ckpt
    from raymmr.tune.trial import can_resume

    assert can_resume(tmp_path / "pretrain") is False  # never started
    run = tmp_path / "pretrain"
    c = run / "ray" / "step_0000004"
    (c / ckpt.TAG).mkdir(parents=True)
    (c / ckpt.META).write_text(json.dumps({"step": 4, "world_size": 1, "zero_stage": 2, "stage": "pretrain"}))
    (run / "metrics.jsonl").write_text('{"step": 2}\n')
    assert can_resume(run) is False  # no rank marker: moved aside, the stage starts over
    assert not run.exists()
    (aside,) = tmp_path.glob("pretrain.interrupted-*")
    assert (aside / "metrics.jsonl").read_text() == '{"step": 2}\n'  # its logs are kept
    ckpt.seal(aside / "ray" / "step_0000004", 0, 4)
    aside.rename(run)
    assert can_resume(run) is True and run.exists()


def test_tune_metric_must_be_reported_by_every_trial_in_its_direction(tmp_path):
    import yaml

    from raymmr.config import ConfigError, load_config
    from raymmr.tune.checks import check_metric
    from raymmr.tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"objective": "pretrain", "params": {"loss.w_img": {"uniform": [0.5, 2.0]}}}))
    space = load_space(str(path))

    def check(*overrides):
        check_metric(load_config("tiny", ["tune.objective=pretrain", *overrides]), space)

    check("tune.metric=val_vqa_accuracy", "tune.mode=max")
    check("tune.metric=val_rec_txt_global", "tune.mode=min")  # fixed, non-zero weight: always reported
    with pytest.raises(ConfigError, match="weighted loss"):
        check("tune.metric=val_loss", "tune.mode=min")
    with pytest.raises(ConfigError, match="set tune.mode=max"):
        check("tune.metric=val_vqa_accuracy", "tune.mode=min")
    with pytest.raises(ConfigError, match="not reported at every rung"):
        check("tune.metric=val_rec_img_global", "tune.mode=min")  # its weight is searched: may be 0
    with pytest.raises(ConfigError, match="not reported at every rung"):
        check("tune.metric=val_dom_consist", "tune.mode=min", "loss.w_dom_consist=0")
    with pytest.raises(ConfigError, match="not reported at every rung"):
        check("tune.metric=val_vqa_acc", "tune.mode=max")  # a typo


def test_retrieval_refused_as_a_finetuning_sweep_metric(tmp_path):
    """Fine-tuning validates on VQA samples only: it has no retrieval rank to report, so a sweep of
    fine-tunings must not rank its trials on one (it used to read a constant 0)."""
    import yaml

    from raymmr.config import ConfigError, load_config
    from raymmr.tune.checks import check_metric
    from raymmr.tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {"loss.w_mix": {"uniform": [0.5, 2.0]}}}))
    space = load_space(str(path))
    with pytest.raises(ConfigError, match="ranks no caption"):
        check_metric(load_config("tiny", ["tune.metric=val_retrieval_mean_rank", "tune.mode=min"]), space)
    check_metric(load_config("tiny", ["tune.objective=pretrain", "tune.metric=val_retrieval_mean_rank",
                                      "tune.mode=min"]), space)  # pre-training ranks its captions


def test_trial_records_status_from_the_rung_clock():
    from types import SimpleNamespace

    from raymmr.tune.trial import trial_records

    def result(rung, error=None, trial="t"):
        metrics = {"trial_id": trial, "val_vqa_accuracy": 0.5, "rung": rung, "training_iteration": 1}
        return SimpleNamespace(config={"params": {"loss.w_img": 1.0}}, metrics=metrics, error=error, path=f"/x/{trial}")

    done, early, mid, failed = trial_records(
        [result(3.0), result(1.0), result(2.5), result(0, error=RuntimeError("boom"))], "val_vqa_accuracy", max_rung=3
    )
    # a resumed trial reports training_iteration 1 but rung 3: it completed
    assert (done["status"], done["iterations"], done["params"]) == ("COMPLETED", 3, {"loss.w_img": 1.0})
    assert (early["status"], early["iterations"]) == ("STOPPED_EARLY", 1)
    assert (mid["status"], mid["iterations"]) == ("STOPPED_EARLY", 2.5)
    assert failed["status"] == "ERROR" and done["objective"] == 0.5
    assert failed["error"] == "boom" and done["error"] == ""


def test_sweep_fitted_to_an_embedded_machine():
    from raymmr.config import ConfigError, load_config
    from raymmr.train.launch import GB
    from raymmr.tune.resources import fit_to_machine

    quiet = lambda *_: None  # noqa: E731
    # tiny: 1 worker x 2 CPU per trial, 2 trials at once: on 2 CPUs each trial gets one.
    fitted = fit_to_machine(load_config("tiny"), {"CPU": 2.0, "memory": 16 * GB}, log=quiet)
    assert fitted.train.cpus_per_worker == 0.99 and fitted.tune.max_concurrent == 2
    assert 2 * (fitted.tune.trial_cpus + fitted.train.cpus_per_worker) <= 2.0
    # Enough room: nothing changes.
    roomy = fit_to_machine(load_config("tiny"), {"CPU": 16.0, "memory": 16 * GB}, log=quiet)
    assert roomy.train.cpus_per_worker == 2 and roomy.tune.max_concurrent == 2
    # 4 trials of 2 workers on 2 CPUs: fewer trials at once, each worker at least half a CPU.
    crowded = fit_to_machine(load_config("tiny", ["train.num_workers=2", "tune.max_concurrent=4"]),
                             {"CPU": 2.0, "memory": 16 * GB}, log=quiet)
    assert crowded.tune.max_concurrent == 1 and 0.5 <= crowded.train.cpus_per_worker <= 0.995
    with pytest.raises(ConfigError, match="GPU"):
        fit_to_machine(load_config("tiny", ["train.gpus_per_worker=1"]), {"CPU": 2.0, "memory": 16 * GB}, log=quiet)
    # One GPU, a GPU per worker: one trial at a time (four at once would leave three waiting for it).
    one_gpu = fit_to_machine(load_config("tiny", ["train.gpus_per_worker=1", "tune.max_concurrent=4"]),
                             {"CPU": 16.0, "GPU": 1.0, "memory": 16 * GB}, log=quiet)
    assert one_gpu.tune.max_concurrent == 1
    halves = fit_to_machine(load_config("tiny", ["train.gpus_per_worker=0.5", "tune.max_concurrent=4"]),
                            {"CPU": 16.0, "GPU": 1.0, "memory": 16 * GB}, log=quiet)
    assert halves.tune.max_concurrent == 2
    # Memory: 8 GB a trial's worker on a 20 GB machine, so two trials at once; more than the machine: refused.
    by_memory = fit_to_machine(load_config("tiny", ["train.memory_per_worker_gb=8", "tune.max_concurrent=4"]),
                               {"CPU": 16.0, "memory": 20 * GB}, log=quiet)
    assert by_memory.tune.max_concurrent == 2
    with pytest.raises(ConfigError, match=r"1 workers x 32 GB of memory do not fit this machine \(20 GB of memory\); "
                                          "lower train.memory_per_worker_gb"):
        fit_to_machine(load_config("tiny", ["train.memory_per_worker_gb=32"]), {"CPU": 16.0, "memory": 20 * GB},
                       log=quiet)
    # An elastic group is fitted at its minimum.
    elastic = fit_to_machine(load_config("tiny", ["train.num_workers=2:4", "train.gpus_per_worker=1",
                                                  "tune.max_concurrent=4"]),
                              {"CPU": 16.0, "GPU": 4.0, "memory": 16 * GB}, log=quiet)
    assert elastic.tune.max_concurrent == 2
    with pytest.raises(ConfigError, match="8 workers"):
        fit_to_machine(load_config("tiny", ["train.num_workers=8"]), {"CPU": 2.0, "memory": 16 * GB}, log=quiet)


def test_resumed_search_closes_a_trial_the_lost_driver_never_recorded(tmp_path):
    """The journal can be newer than Tune's searcher snapshot: a trial asked in between was lost
    with the driver. Restoring closes it as FAIL (it would stay RUNNING in the study forever)."""
    from raymmr.tune.study import load_study, study_search

    space, t = one_param_space(tmp_path)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    first = study_search(space, t, str(sweep))
    assert first.suggest("a") and first.suggest("b")
    first.on_trial_complete("a", {"val_rec_txt_global": 1.0})
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot: a done, b running
    assert first.suggest("c")  # asked after the snapshot, then the driver is lost

    second = study_search(space, t, str(sweep))
    second.restore(str(tmp_path / "searcher.pkl"))
    states = [trial.state for trial in load_study(str(sweep)).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]
    second.on_trial_complete("b", {"val_rec_txt_global": 2.0})  # b, known to the snapshot, still reports
    assert load_study(str(sweep)).trials[1].state == optuna.trial.TrialState.COMPLETE


def test_resumed_search_keeps_the_outcome_of_a_trial_the_lost_driver_finished(tmp_path):
    """The other way round: the lost driver finished trial a (the journal says so) after Tune's last
    snapshot, which still has a running. Tune runs a on; its further results and its second
    completion must not end the sweep (UpdateFinishedTrialError did), and the study keeps a's
    first outcome. b goes on as usual."""
    from raymmr.tune.study import load_study, study_search

    space, t = one_param_space(tmp_path)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    first = study_search(space, t, str(sweep))
    assert first.suggest("a") and first.suggest("b")
    first.on_trial_result("a", {"val_rec_txt_global": 3.0, "training_iteration": 1})
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot: a and b running
    first.on_trial_result("a", {"val_rec_txt_global": 1.5, "training_iteration": 2})
    first.on_trial_complete("a", {"val_rec_txt_global": 1.0})  # then the driver is lost

    second = study_search(space, t, str(sweep))
    second.restore(str(tmp_path / "searcher.pkl"))
    second.on_trial_result("a", {"val_rec_txt_global": 0.5, "training_iteration": 2})
    second.on_trial_complete("a", {"val_rec_txt_global": 0.5})
    second.on_trial_result("b", {"val_rec_txt_global": 2.5, "training_iteration": 1})
    second.on_trial_complete("b", {"val_rec_txt_global": 2.0})
    a, b = load_study(str(sweep)).trials
    assert (a.state, a.value, a.intermediate_values) == (optuna.trial.TrialState.COMPLETE, 1.0, {1: 3.0, 2: 1.5})
    assert (b.state, b.value) == (optuna.trial.TrialState.COMPLETE, 2.0)


def test_a_remote_sweeps_journal_reaches_the_url_before_each_searcher_snapshot(tmp_path, s3_server):
    """Tune restores its searcher from a snapshot; the URL's journal must hold every trial that
    snapshot knows (it was uploaded only when a trial finished: a trial asked since was missing)."""
    from raymmr import storage
    from raymmr.tune.study import JOURNAL, optuna_storage, study_search

    space, t = one_param_space(tmp_path)
    sweep = s3_server.url("sweeps", uuid.uuid4().hex)  # not one whose journal a cache kept from an earlier run
    search = study_search(space, t, sweep)
    assert search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))
    journal = tmp_path / "journal"
    journal.write_bytes(storage.read_bytes(f"{sweep}/{JOURNAL}"))
    study = optuna.load_study(study_name="raymmr", storage=optuna_storage(journal))
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.RUNNING]


def test_a_new_sweep_starts_a_new_study_where_an_earlier_one_never_reached_tune(tmp_path, s3_server):
    """A sweep that stopped before Tune's first snapshot left a study (a trial asked, in the bucket
    and in this machine's cache) and nothing to continue: the launch (with or without `--resume`)
    starts an empty study in the same --out (Optuna would otherwise load the old one and count its
    trials as this sweep's)."""
    from raymmr import storage
    from raymmr.tune.checks import check_sweep_dir
    from raymmr.tune.study import JOURNAL, load_study, study_search

    space, t = one_param_space(tmp_path)
    sweep = s3_server.url("sweeps", uuid.uuid4().hex)
    search = study_search(space, t, sweep)
    assert search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))  # the journal reaches the bucket
    assert storage.exists(f"{sweep}/{JOURNAL}")
    assert check_sweep_dir(sweep, resume=True, base=load_config("tiny"), space=space) is False
    assert not storage.exists(f"{sweep}/{JOURNAL}")
    assert study_search(space, t, sweep).suggest("b")
    assert len(load_study(sweep).trials) == 1


def one_param_space(tmp_path):
    import yaml

    from raymmr.tune.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"objective": "pretrain", "params": {"loss.w_img": {"uniform": [0.5, 2.0]}}}))
    return load_space(str(path)), load_config("tiny", ["tune.metric=val_rec_txt_global", "tune.mode=min"]).tune


def test_a_sampled_sweep_is_plotted_by_optuna_and_a_grid_by_raymmr(tmp_path):
    from raymmr.tune.report import plot_study

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: t.suggest_float("loss.w_img", 0.0, 1.0) + 0.01 * t.suggest_float("loss.w_txt", 0.0, 1.0), n_trials=8
    )
    paths = {name: tmp_path / f"{name}.png" for name in ("history", "importances", "parallel")}
    assert plot_study(study, paths, metric="val_vqa_accuracy", importance_method="optuna PED-ANOVA")
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths.values())
    assert not plot_study(None, paths, metric="m", importance_method="")  # a grid sweep: no study
    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("loss.w_img", 0.0, 1.0), n_trials=1)
    assert not plot_study(single, paths, metric="m", importance_method="")
    records = [{"trial_id": str(t.number), "params": t.params, "objective": t.value, "iterations": 1,
                "status": "TERMINATED"} for t in study.trials]  # fmt: skip
    written = write_report(records, tmp_path / "report", base_cfg=load_config("tiny"), study=study)
    assert all(written[k].exists() for k in ("history", "importances", "parallel"))


def test_a_trial_that_fails_deterministically_is_not_retried_by_the_same_sweep_launch(tmp_path, monkeypatch):
    """Tune retries a failed trial (``tune.max_failures``: a lost node). A config error fails the
    same way every time: the trial's retries end at once naming it, with no stage run again; a
    transient error is retried; a later launch of the sweep (--resume, perhaps after a fix) runs
    the trial again."""
    import ray.tune

    from raymmr.config import ConfigError, load_config
    from raymmr.errors import JobError
    from raymmr.tune import trial as trials

    class Context:
        def get_trial_id(self):
            return "t0"

    monkeypatch.setattr(ray.tune, "get_context", lambda: Context())
    calls = []
    errors = iter([ConfigError("loss.w_img=-1: below its range"), RuntimeError("node lost")])

    def failing_stage(cfg, stage, run, data, **kwargs):
        calls.append(stage)
        raise next(errors)

    monkeypatch.setattr(trials, "run_stage", failing_stage)
    base = load_config("tiny")
    trial = trials.make_trainable(base, str(tmp_path), data="unused", launch="launch-1")
    with pytest.raises(ConfigError):
        trial({"loss.w_img": 1.0})
    assert calls == ["pretrain"]
    recorded = json.loads((tmp_path / "trials" / "t0" / trials.TRIAL_FAILED).read_text())
    assert recorded == {"launch": "launch-1", "error": "loss.w_img=-1: below its range"}
    with pytest.raises(JobError, match="trial t0 not retried: .* every time: loss.w_img=-1: below its range"):
        trial({"loss.w_img": 1.0})  # Tune's retry
    assert calls == ["pretrain"]  # nothing trained again
    # A later launch of the sweep runs the trial again; a transient error leaves no mark and is retried.
    again = trials.make_trainable(base, str(tmp_path), data="unused", launch="launch-2")
    with pytest.raises(RuntimeError, match="node lost"):
        again({"loss.w_img": 1.0})
    assert calls == ["pretrain", "pretrain"]
    assert json.loads((tmp_path / "trials" / "t0" / trials.TRIAL_FAILED).read_text())["launch"] == "launch-1"
    monkeypatch.setattr(trials, "run_stage", lambda *a, **k: calls.append("retried") or "export")
    again({"loss.w_img": 1.0})
    assert calls[-2:] == ["retried", "retried"]  # pre-training, then fine-tuning


def test_a_stage_trained_from_another_config_or_data_is_set_aside_and_trained_again(tmp_path, monkeypatch):
    """A sweep's stage (its shared pre-training above all) is reused across launches only when it was
    trained from this launch's config and data: anything else is moved aside (kept) and trained again."""
    from pathlib import Path

    from raymmr import storage
    from raymmr.config import load_config, to_yaml
    from raymmr.train import launch
    from raymmr.tune import trial as trials

    monkeypatch.setattr(launch, "data_fingerprint", lambda data: f"fp-{Path(data).name}")
    trained = []

    def fake_training(cfg, stage, out, data, **kwargs):
        trained.append(out)
        return type("Result", (), {"export_dir": storage.join(out, storage.EXPORT)})()

    monkeypatch.setattr(launch, "run_training", fake_training)
    cfg = load_config("tiny")

    def exported_stage(name: str) -> Path:
        run = tmp_path / name / "shared_pretrain"
        (run / storage.EXPORT).mkdir(parents=True)
        (run / storage.EXPORT / storage.WEIGHTS).write_bytes(b"weights")
        (run / "config.yaml").write_text(to_yaml(cfg))
        (run / launch.RUN_DATA).write_text(json.dumps({"data": "/d/shards-a", "fingerprint": "fp-shards-a"}))
        return run

    # The same config (and what a sweep's launch may change), the same shard set elsewhere: reused.
    run = exported_stage("same")
    same = load_config("tiny", ["tune.max_concurrent=1", "train.cpus_per_worker=0.99"])
    assert trials.run_stage(same, "pretrain", str(run), "/elsewhere/shards-a") == str(run / storage.EXPORT)
    assert trained == []
    # Other data, another loss weight, other steps: moved aside with its weights, trained again.
    for name, changed, data in [("data", cfg, "/d/shards-b"),
                                ("weight", load_config("tiny", ["loss.w_img=0.5"]), "/d/shards-a"),
                                ("steps", load_config("tiny", ["train.steps=301"]), "/d/shards-a")]:
        run = exported_stage(name)
        trials.run_stage(changed, "pretrain", str(run), data)
        assert trained[-1] == str(run), name
        assert not (run / storage.EXPORT / storage.WEIGHTS).exists(), name
        (aside,) = run.parent.glob("shared_pretrain.superseded-*")
        assert (aside / storage.EXPORT / storage.WEIGHTS).read_bytes() == b"weights", name


def _two_objective_records():
    """Hand-made trials on (clean, cross-domain) validation accuracy, both maximised:
    a (0.60, 0.40), b (0.50, 0.55), c (0.55, 0.45), d (0.50, 0.40) dominated by a and c,
    e (0.60, 0.40) equal to a, f errored with the best values, g without the second value."""
    def rec(trial, clean, cross, status="COMPLETED"):
        return {"trial_id": trial, "params": {"loss.w_img": clean}, "objective": clean,
                "objectives": {"val_vqa_accuracy": clean, "val_vqa_accuracy_cross_domain": cross},
                "iterations": 3, "status": status}

    return [rec("a", 0.60, 0.40), rec("b", 0.50, 0.55), rec("c", 0.55, 0.45), rec("d", 0.50, 0.40),
            rec("e", 0.60, 0.40), rec("f", 0.90, 0.90, status="ERROR"), rec("g", 0.95, None)]


def test_pareto_front_holds_exactly_the_non_dominated_trials():
    from raymmr.tune.report import pareto_front

    both_max = [("val_vqa_accuracy", "max"), ("val_vqa_accuracy_cross_domain", "max")]
    records = _two_objective_records()
    assert [r["trial_id"] for r in pareto_front(records, both_max)] == ["a", "e", "c", "b"]
    # Checked against the definition, pair by pair: on the front iff no eligible trial dominates it.
    eligible = [r for r in records if r["trial_id"] not in ("f", "g")]
    values = {r["trial_id"]: tuple(r["objectives"].values()) for r in eligible}
    dominated = {t for t, v in values.items()
                 if any(all(x >= y for x, y in zip(w, v)) and w != v for w in values.values())}
    assert {r["trial_id"] for r in pareto_front(records, both_max)} == set(values) - dominated == {"a", "b", "c", "e"}
    # Direction matters: minimising the second objective makes d and a/e the front (c is beaten by a).
    mixed = [("val_vqa_accuracy", "max"), ("val_vqa_accuracy_cross_domain", "min")]
    assert [r["trial_id"] for r in pareto_front(records, mixed)] == ["a", "e"]
    assert pareto_front([], both_max) == []


def test_a_two_objective_report_writes_the_front_and_a_config_per_point(tmp_path):
    from raymmr.config import load_config
    from raymmr.tune.report import write_report

    base = load_config("tiny")
    paths = write_report(_two_objective_records(), tmp_path, base_cfg=base,
                         metric="val_vqa_accuracy,val_vqa_accuracy_cross_domain", mode="max,max", title="two")
    front = json.loads((tmp_path / "front.json").read_text())
    assert [p["trial_id"] for p in front["front"]] == ["a", "e", "c", "b"]
    for point in front["front"]:
        assert load_config(str(tmp_path / point["config"])).loss.w_img == point["params"]["loss.w_img"]
    assert sorted(p.name for p in (tmp_path / "front").iterdir()) == ["a.yaml", "b.yaml", "c.yaml", "e.yaml"]
    assert not (tmp_path / "best_config.yaml").exists()  # no single best
    assert (tmp_path / "front.png").stat().st_size > 5000 and paths["front_plot"] == tmp_path / "front.png"
    table = (tmp_path / "trials.md").read_text()
    assert "## Pareto front" in table and "no single best" in table and "front/b.yaml" in table
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert {r["trial_id"]: r["front"] for r in rows} == {"a": "yes", "b": "yes", "c": "yes", "d": "", "e": "yes",
                                                          "f": "", "g": ""}
    by_id = {r["trial_id"]: r for r in rows}
    assert by_id["a"]["val_vqa_accuracy_cross_domain"] == "0.4" and by_id["g"]["val_vqa_accuracy_cross_domain"] == ""
    assert [r["trial_id"] for r in rows][:2] == ["g", "a"]  # ranked by the first objective


def test_several_objectives_are_checked_one_by_one():
    from raymmr.config import ConfigError, load_config
    from raymmr.tune.checks import check_metric
    from raymmr.tune.space import load_space

    space = load_space("mixup")

    def check(*overrides):
        check_metric(load_config("tiny", list(overrides)), space)

    check("tune.metric=val_vqa_accuracy,val_vqa_accuracy_cross_domain", "tune.mode=max,max")
    with pytest.raises(ConfigError, match="names 2 metric"):
        load_config("tiny", ["tune.metric=val_vqa_accuracy,val_vqa_accuracy_cross_domain"])
    with pytest.raises(ConfigError, match="tune.mode=min with tune.metric=val_vqa_accuracy_cross_domain"):
        check("tune.metric=val_vqa_accuracy,val_vqa_accuracy_cross_domain", "tune.mode=max,min")
    with pytest.raises(ConfigError, match="names a metric twice"):
        check("tune.metric=val_vqa_accuracy,val_vqa_accuracy", "tune.mode=max,max")
    with pytest.raises(ConfigError, match="val_retrieval_mean_rank with tune.objective=finetune"):
        check("tune.metric=val_vqa_accuracy,val_retrieval_mean_rank", "tune.mode=max,min")


def test_the_parallel_coordinates_of_nine_loss_weights_have_labels_that_do_not_overprint():
    """The loss_weights space has nine weights: Optuna's plot at its default width overprinted its
    axis labels; fitted, no two labels' boxes overlap."""
    import warnings

    from matplotlib import pyplot
    from optuna.visualization import matplotlib as vis

    from raymmr.tune.report import fit_parallel_labels

    names = [f"loss.w_{n}" for n in ("img", "txt", "img_local", "txt_local", "con_inter", "con_intra",
                                     "dom_consist", "mod_resil", "ans")]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: sum(t.suggest_float(n, 0.0, 2.0) for n in names), n_trials=12)

    def overlaps(figure) -> int:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        # the first axes carry the labels (the others are twins, one per parameter's own y scale)
        boxes = [label.get_window_extent(renderer) for label in figure.axes[0].get_xticklabels() if label.get_text()]
        assert len(boxes) >= len(names)
        return sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = vis.plot_parallel_coordinate(study, target_name="val_vqa_accuracy")
    figure = ax.figure
    figure.set_size_inches(7.0, 4.5)  # what every study plot used to get
    assert overlaps(figure) > 0  # the test can see the fault
    fit_parallel_labels(figure, len(names))
    assert overlaps(figure) == 0
    pyplot.close(figure)


def test_the_report_says_how_noisy_its_metric_is_and_warns_when_the_trials_are_inside_it(tmp_path):
    """The four-way tie of a 24-step sweep (every trial at the majority answer): the table says the
    metric's interval and that the ranking may be noise; trials far apart get the interval only."""
    from raymmr.tune.checks import validation_questions
    from raymmr.tune.report import noise_note, rank_trials

    tied = [{"trial_id": t, "params": {}, "objective": 0.328125, "iterations": 3, "status": "COMPLETED"} for t in "abcd"]
    note = noise_note(rank_trials(tied), "val_vqa_accuracy", questions=64)
    # 1.96 * sqrt(0.328 * 0.672 / 64) = 11.5 points
    assert "64 validation questions" in note and "±11.5 points at 32.8%" in note and "may be noise" in note
    apart = [{**tied[0], "objective": 0.3}, {**tied[1], "trial_id": "b", "objective": 0.7}]
    note = noise_note(rank_trials(apart), "val_vqa_accuracy", questions=400)
    assert "±4.5 points" in note and "may be noise" not in note
    assert noise_note(rank_trials(tied), "val_rec_img_global", questions=64) == ""  # no accuracy
    written = write_report(tied, tmp_path, base_cfg=load_config("tiny"), metric="val_vqa_accuracy", questions=64)
    assert "may be noise" in written["markdown"].read_text()
    # tiny fine-tuning validates 5 batches of 32 on one worker: 160 questions; pre-training reads
    # captions too, so fewer VQA questions (the split's share).
    assert validation_questions(load_config("tiny"), data="unused") == 160
    assert validation_questions(load_config("tiny", ["tune.objective=pretrain"]), data=str(tmp_path)) is None


def test_tpe_models_the_space_after_a_third_of_a_small_budget():
    """Optuna's TPE samples its first 10 trials at random: a 5-trial TPE search was random search
    (the efficiency benchmark drew the same points with both). A third of the budget, 2 to 10."""
    from raymmr.tune.study import tpe_startup_trials

    assert [tpe_startup_trials(n) for n in (1, 5, 9, 20, 30, 64, 1000)] == [2, 2, 3, 6, 10, 10, 10]
