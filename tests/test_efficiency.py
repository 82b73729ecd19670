"""raymmr.tune.efficiency: the accounting, the choice, the confirmation against the grid (hand-made
trials and questions), the sampled twin of the grid space, and the BENCHMARKS.md rows."""

import numpy as np
import pytest

from raymmr.tune import efficiency as E


def rec(trial, objective, iterations=3, status="COMPLETED", lr=5e-4):
    return {"trial_id": trial, "params": {"finetune.lr": lr}, "objective": objective, "iterations": iterations,
            "status": status}


def test_the_sampled_space_draws_from_exactly_the_grid_points(tmp_path):
    from raymmr.tune.space import load_space

    grid = load_space("efficiency_grid")
    sampled = E.sampled_space(grid.path, tmp_path)
    assert grid.is_grid and not sampled.is_grid and len(grid.grid_points()) == 9
    assert {p.kind for p in sampled.params} == {"choice"}
    values = {p.key: p.values for p in sampled.params}
    points = {tuple(sorted(p.items())) for p in grid.grid_points()}
    assert points == {(("finetune.lr", lr), ("loss.w_mix", w)) for lr in values["finetune.lr"]
                      for w in values["loss.w_mix"]}


def test_steps_are_counted_by_the_rungs_a_trial_reached():
    assert E.trial_steps(rec("a", 0.5, iterations=3), steps=300, rungs=3) == 300
    assert E.trial_steps(rec("b", 0.5, iterations=1), steps=300, rungs=3) == 100
    assert E.trial_steps(rec("c", 0.5, iterations=2.5), steps=300, rungs=3) == 250  # stopped mid-rung
    assert E.trial_steps(rec("d", None, iterations=0, status="ERROR"), steps=300, rungs=3) == 0
    curve = E.best_so_far([rec("a", 0.4), rec("b", 0.6, iterations=1), rec("c", 0.5)], steps=300, rungs=3)
    assert curve == [(300, 0.4), (400, 0.6), (700, 0.6)]


def test_a_search_chooses_its_best_trial_that_ran_to_the_end():
    records = [rec("early", 0.9, iterations=1, status="STOPPED_EARLY"), rec("ok", 0.6), rec("best", 0.7),
               rec("broken", 0.95, status="ERROR")]
    assert E.choice(records)["trial_id"] == "best"
    assert E.choice([rec("early", 0.9, iterations=1, status="STOPPED_EARLY")]) is None


def questions(accuracy, seed, n_images=300):
    rng = np.random.default_rng(seed)
    return {f"q{i:03d}-{j}": {"image": i, "in_domain": True, "correct": {"clean": int(rng.random() < accuracy)}}
            for i in range(n_images) for j in range(3)}


def test_the_goal_needs_the_grids_accuracy_within_the_interval_at_a_third_of_its_steps():
    grid_q = questions(0.6, 1)
    results = {
        "grid": {"trials": 9, "steps": 9 * 300, "curve": [], "choice": rec("g", 0.6), "questions": grid_q},
        # as good as the grid (the same questions right) at 30% of its steps: the goal is met
        "random_asha": {"trials": 5, "steps": 810, "curve": [], "choice": rec("r", 0.6), "questions": dict(grid_q)},
        # clearly worse (about 20 points): not met, whatever its cost
        "tpe_asha": {"trials": 5, "steps": 700, "curve": [], "choice": rec("t", 0.5), "questions": questions(0.4, 2)},
    }
    report = E.summarize(results, n_boot=300)
    s = report["searches"]
    assert s["random_asha"]["fraction_of_grid"] == pytest.approx(0.3) and s["random_asha"]["meets_goal"] is True
    assert s["random_asha"]["choice"]["minus_grid"] == 0 and s["random_asha"]["choice"]["minus_grid_ci"] == [0, 0]
    assert s["tpe_asha"]["meets_goal"] is False and s["tpe_asha"]["choice"]["minus_grid_ci"][1] < 0
    # As good, but at 40% of the grid's steps: not met.
    results["random_asha"]["steps"] = 0.4 * 9 * 300
    assert E.summarize(results, n_boot=300)["searches"]["random_asha"]["meets_goal"] is False
    table = E.markdown(report)
    assert "| random_asha | 5 | 810 | 30% |" in table and "| yes |" in table and "| no |" in table


def test_benchmark_rows_go_under_their_section_once(tmp_path):
    from raymmr.jobs.benchmark_search import SECTION, append_rows

    report = {"searches": {"grid": {"trials": 9, "steps": 2700, "fraction_of_grid": 1.0, "choice": None},
                           "tpe_asha": {"trials": 5, "steps": 800, "fraction_of_grid": 0.296, "choice": None,
                                        "meets_goal": False}}}
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Data loader (CPU)\n\n| a |\n|---|\n| 1 |\n")
    append_rows(str(md), report, "python jobs/benchmark_search.py", "benchmarks/search_efficiency.png")
    append_rows(str(md), report, "python jobs/benchmark_search.py", "benchmarks/search_efficiency.png")
    text = md.read_text()
    assert text.count(SECTION) == 1 and text.count("![search efficiency](benchmarks/search_efficiency.png)") == 1
    assert text.count("| grid | 9 | 2700 | 100% |") == 2 and text.count("| tpe_asha | 5 | 800 | 30% |") == 2
    assert text.index("## Data loader") < text.index(SECTION)
