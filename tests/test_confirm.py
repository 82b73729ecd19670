"""raymmr.confirm: a sweep's candidates ranked by seed-averaged validation accuracy, a winner only
where the interval separates it from the runner-up (hand-made evaluation rows)."""

import numpy as np
import pytest

from raymmr.confirm import confirm_markdown, confirmed_ranking

N_IMAGES, PER_IMAGE = 200, 3
CLEAN = [("val_vqa_accuracy", "max")]


def questions(accuracy: float, seed: int, cross_accuracy: float | None = None) -> dict[str, dict]:
    """One run's validation questions: N_IMAGES images x PER_IMAGE questions, the first quarter of
    the images from a domain outside training; each question right with the given rate (drawn)."""
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(N_IMAGES):
        cross = i < N_IMAGES // 4
        rate = cross_accuracy if cross and cross_accuracy is not None else accuracy
        for j in range(PER_IMAGE):
            rows[f"q{i:03d}-{j}"] = {"image": i, "in_domain": not cross, "correct": {"clean": int(rng.random() < rate)}}
    return rows


def test_a_clear_gap_names_the_winner_and_a_gap_inside_the_interval_is_a_tie():
    seeds = [0, 1, 2]
    # a is 15 points above b on every seed: a winner.
    runs = {"b": [questions(0.50, 100 + s) for s in seeds], "a": [questions(0.65, 200 + s) for s in seeds]}
    ranking = confirmed_ranking(runs, CLEAN, seeds, n_boot=400)
    assert [e["trial_id"] for e in ranking["candidates"]] == ["a", "b"]
    assert ranking["winner"] == "a" and ranking["tied"] == []
    lo, hi = ranking["candidates"][1]["minus_top"]["ci"]
    assert hi < 0 and lo < ranking["candidates"][1]["minus_top"]["mean"] < hi
    # c and d draw from the same rate: whichever mean is higher, it is a tie, and e (far below) is not in it.
    runs = {"c": [questions(0.55, 300 + s) for s in seeds], "d": [questions(0.55, 400 + s) for s in seeds],
            "e": [questions(0.30, 500 + s) for s in seeds]}
    ranking = confirmed_ranking(runs, CLEAN, seeds, n_boot=400)
    top, runner_up, last = ranking["candidates"]
    assert {top["trial_id"], runner_up["trial_id"]} == {"c", "d"} and last["trial_id"] == "e"
    assert top["mean"]["val_vqa_accuracy"] >= runner_up["mean"]["val_vqa_accuracy"]
    lo, hi = runner_up["minus_top"]["ci"]
    assert lo < 0 <= hi
    assert ranking["winner"] is None and ranking["tied"] == [top["trial_id"], runner_up["trial_id"]]
    text = confirm_markdown(ranking)
    assert "**Tied:" in text and "not a proven winner" in text and "Winner" not in text


def test_the_mean_is_over_seeds_and_the_cross_domain_objective_reads_its_own_questions():
    seeds = [0, 1]
    # f: 60% everywhere; g: 70% on training domains, 20% on the cross-domain quarter.
    runs = {"f": [questions(0.6, 10 + s) for s in seeds], "g": [questions(0.7, 20 + s, cross_accuracy=0.2) for s in seeds]}
    both = [("val_vqa_accuracy", "max"), ("val_vqa_accuracy_cross_domain", "max")]
    ranking = confirmed_ranking(runs, both, seeds, n_boot=400)
    by_id = {e["trial_id"]: e for e in ranking["candidates"]}
    for trial, per_seed in runs.items():
        hits = [[q["correct"]["clean"] for q in run.values()] for run in per_seed]
        cross = [[q["correct"]["clean"] for q in run.values() if not q["in_domain"]] for run in per_seed]
        assert by_id[trial]["mean"]["val_vqa_accuracy"] == pytest.approx(np.mean(hits))
        assert by_id[trial]["mean"]["val_vqa_accuracy_cross_domain"] == pytest.approx(np.mean(cross))
    assert by_id["g"]["mean"]["val_vqa_accuracy_cross_domain"] < 0.3 < by_id["f"]["mean"]["val_vqa_accuracy_cross_domain"]
    for e in ranking["candidates"]:
        for metric, _ in both:
            lo, hi = e["ci"][metric]
            assert lo <= e["mean"][metric] <= hi


def test_candidates_must_answer_the_same_questions_with_every_seed():
    with pytest.raises(ValueError, match="lacks a seed"):
        confirmed_ranking({"a": [questions(0.5, 1)], "b": [questions(0.5, 2), questions(0.5, 3)]}, CLEAN, [0, 1])


def test_run_confirmation_trains_each_candidate_with_each_seed_once_and_ranks_them(tmp_path, monkeypatch):
    """Every (candidate, seed) goes through the pipeline on validation with the candidate's params and
    that seed; a second call reads the finished runs back instead of training again."""
    import json

    from raymmr import pipeline
    from raymmr.config import load_config
    from raymmr.confirm import CONFIRM_DIR, candidates, run_confirmation
    from raymmr.eval.evaluate import QUESTIONS

    calls = []

    def fake_pipeline(cfg, out, data, *, text_only=True, severities=None, final_test=False, **kwargs):
        calls.append((cfg.loss.w_img, cfg.train.seed, text_only, severities, final_test))
        rows = questions(0.3 + 0.4 * cfg.loss.w_img, seed=cfg.train.seed)  # w_img 1.0 -> 70%, 0.25 -> 40%
        eval_dir = tmp_path / "sweep" / CONFIRM_DIR / out.split(f"{CONFIRM_DIR}/")[1] / "eval" / "val"
        eval_dir.mkdir(parents=True)
        (eval_dir / QUESTIONS).write_text("".join(json.dumps({"key": k, **q}) + "\n" for k, q in rows.items()))
        return {}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    cfg = load_config("tiny", ["tune.confirm_top=2", "tune.confirm_seeds=3,4"])
    records = [{"trial_id": t, "params": {"loss.w_img": w}, "objective": o, "iterations": 3, "status": "COMPLETED"}
               for t, w, o in [("lucky", 0.25, 0.9), ("good", 1.0, 0.8), ("third", 0.5, 0.7)]]
    chosen = candidates(records, cfg, front=None)
    assert [c["trial_id"] for c in chosen] == ["lucky", "good"]  # the search's top two
    ranking = run_confirmation(cfg, chosen, str(tmp_path / "sweep"), data="unused", log=lambda *_: None)
    assert sorted(calls) == [(0.25, 3, False, (), False), (0.25, 4, False, (), False),
                             (1.0, 3, False, (), False), (1.0, 4, False, (), False)]
    # The search's luckiest trial loses once seeds and all validation questions are counted.
    assert [e["trial_id"] for e in ranking["candidates"]] == ["good", "lucky"] and ranking["winner"] == "good"
    assert ranking["candidates"][0]["params"] == {"loss.w_img": 1.0}
    saved = json.loads((tmp_path / "sweep" / CONFIRM_DIR / "confirm.json").read_text())
    assert saved["winner"] == "good" and saved["seeds"] == [3, 4]
    assert "**Winner: `good`**" in (tmp_path / "sweep" / CONFIRM_DIR / "confirm.md").read_text()
    run_confirmation(cfg, chosen, str(tmp_path / "sweep"), data="unused", log=lambda *_: None)
    assert len(calls) == 4  # nothing trained again


def test_a_confirmation_refuses_an_objective_without_questions():
    from raymmr.config import load_config
    from raymmr.confirm import check_confirmable
    from raymmr.errors import JobError

    check_confirmable(load_config("tiny", ["tune.metric=val_vqa_accuracy,val_vqa_accuracy_cross_domain",
                                           "tune.mode=max,max", "tune.confirm_top=3"]))
    with pytest.raises(JobError, match="not on val_retrieval_mean_rank; set tune.confirm_top=0"):
        check_confirmable(load_config("tiny", ["tune.metric=val_retrieval_mean_rank", "tune.mode=min",
                                               "tune.confirm_top=3"]))
    check_confirmable(load_config("tiny", ["tune.metric=val_retrieval_mean_rank", "tune.mode=min",
                                           "tune.confirm_top=0"]))


def test_the_sweep_job_writes_the_confirmed_choice_and_evaluates_only_it_on_test(tmp_path, monkeypatch, capsys):
    """After the confirmation, best_config.yaml is the confirmed top, not the search's top, and the
    test split is evaluated once, for that choice (its seed run, its own pre-training, with the
    text-only baseline)."""
    import json

    from raymmr import confirm as confirm_module
    from raymmr import pipeline
    from raymmr.config import load_config
    from raymmr.rundir import RunDir
    from raymmr.sweep import confirm

    cfg = load_config("tiny", ["tune.confirm_top=2", "tune.confirm_seeds=5,6"])
    records = [{"trial_id": "lucky", "params": {"loss.w_img": 0.25}, "objective": 0.9, "iterations": 3,
                "status": "COMPLETED"},
               {"trial_id": "good", "params": {"loss.w_img": 1.0}, "objective": 0.8, "iterations": 3,
                "status": "COMPLETED"}]
    sweep = RunDir(str(tmp_path / "sweep"))

    def fake_confirmation(base, chosen, out, data, log=print):
        assert [c["trial_id"] for c in chosen] == ["lucky", "good"]
        (tmp_path / "sweep" / "confirm").mkdir(parents=True)
        (tmp_path / "sweep" / "confirm" / "confirm.md").write_text("# Confirmed ranking\n")
        return {"candidates": [{"trial_id": "good", "params": {"loss.w_img": 1.0}},
                               {"trial_id": "lucky", "params": {"loss.w_img": 0.25}}], "winner": None,
                "tied": ["good", "lucky"]}

    finals = []

    def fake_pipeline(cfg, out, data, *, pretrained=None, final_test=False, **kwargs):
        finals.append((cfg.loss.w_img, cfg.train.seed, out, pretrained, final_test, kwargs.get("text_only", True)))
        test_dir = tmp_path / "sweep" / "confirm" / "good" / "seed5" / "eval" / "test"
        test_dir.mkdir(parents=True)
        (test_dir / "results.md").write_text("Evaluation on `test`, role **final**\n")
        return {}

    monkeypatch.setattr(confirm_module, "run_confirmation", fake_confirmation)
    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    confirm(cfg, records, sweep, data="unused")
    assert load_config(str(tmp_path / "sweep" / "best_config.yaml")).loss.w_img == 1.0
    confirmed = json.loads((tmp_path / "sweep" / "best_trial.json").read_text())["confirmed"]
    assert confirmed == {"trial_id": "good", "winner": None, "tied": ["good", "lucky"], "ranking": "confirm/confirm.json"}
    run = str(tmp_path / "sweep" / "confirm" / "good" / "seed5")
    assert finals == [(1.0, 5, run, f"{run}/pretrain/export", True, True)]
    out = capsys.readouterr().out
    assert "trial good (tied with lucky)" in out and "role **final**" in out
