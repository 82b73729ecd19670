"""search_spaces/*.yaml and raymmr.tune.space: every key resolves, paper grids are exact, bad spaces
fail before Ray with the file and key named, and define-by-run respects conditionals."""

import itertools
import random
from pathlib import Path

import optuna
import pytest

from raymmr.config import ConfigError, check_value, field_spec, load_config
from raymmr.tune.space import SearchSpace, SpaceError, apply_params, load_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
FILES = sorted(SPACES.glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def configs():
    return [load_config("tiny"), load_config("base")]


def _walk(params):
    for p in params:
        yield p
        for _, sub in p.branches:
            yield from _walk(sub)


def test_expected_files_are_present():
    names = {f.stem for f in FILES}
    assert {
        "loss_weights",
        "mask_ratios",
        "similarity_threshold",
        "mixup",
        "full",
        "cmdpi_table3",
        "cmdpi_table4",
        "cmdpi_table5",
        "cmdpi_fig13",
        "cmdpi_fig14",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_key_resolves_and_every_value_is_in_range(path, configs):
    space = load_space(path)
    assert space.keys()
    for key in space.keys():
        field_spec(key)  # raises on an unknown key
    for p in _walk(space.params):
        for v in [*p.values, *(b for b, _ in p.branches), *(x for x in (p.low, p.high) if x is not None)]:
            assert check_value(p.key, v) == v
    for point in space.points:
        for k, v in point.items():
            assert check_value(k, v) == v
    for cfg in configs:  # cross-field checks too: every grid point / corner-biased draws apply
        space.validate_against(cfg)


def test_full_space_covers_every_searchable_setting_of_spec_section_6():
    keys = set(load_space(SPACES / "full.yaml").keys())
    weights = {
        "w_img",
        "w_txt",
        "w_ans",
        "w_con_inter",
        "w_con_intra",
        "w_dom_consist",
        "w_mod_resil",
        "w_mix",
        "w_diff",
    }
    masks = {"mask_ratio_img", "mask_ratio_txt", "mask_ratio_high", "mask_ratio_low", "p_img_side"}
    mixup = {"mixup_dist", "mixup_beta_a", "mixup_beta_b", "mixup_fixed"}
    assert {f"loss.{w}" for w in weights} <= keys
    assert {f"masking.{m}" for m in masks} <= keys
    assert {f"finetune.{m}" for m in mixup} | {"finetune.similarity_threshold"} <= keys
    assert {"train.lr", "loss.temperature"} <= keys
    assert set(load_space(SPACES / "loss_weights.yaml").keys()) == {f"loss.{w}" for w in weights}


# --------------------------------------------------------------------------- paper grids


def _tuples(path, keys):
    space = load_space(SPACES / path)
    assert space.is_grid and space.num_grid_points == len(space.grid_points())
    return [tuple(p.get(k) for k in keys) for p in space.grid_points()]


def test_cmdpi_table3_is_the_tables_eight_rows_in_order():
    rows = _tuples("cmdpi_table3.yaml", ["loss.w_img", "loss.w_txt", "loss.w_ans"])
    assert rows == [
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 1.0),
        (0.5, 1.0, 1.0),
        (0.5, 1.0, 0.5),
        (1.0, 0.5, 0.5),
        (1.0, 0.5, 1.0),
        (1.0, 1.0, 0.5),
        (1.0, 1.0, 1.0),
    ]
    assert set(rows) == set(itertools.product([0.5, 1.0], repeat=3))


def test_cmdpi_table4():
    rows = _tuples("cmdpi_table4.yaml", ["loss.w_mix", "loss.w_diff"])
    assert rows == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]


def test_cmdpi_table5_five_betas_and_uniform():
    rows = _tuples("cmdpi_table5.yaml", ["finetune.mixup_dist", "finetune.mixup_beta_a", "finetune.mixup_beta_b"])
    assert rows == [
        ("beta", 0.2, 0.2),
        ("beta", 0.4, 0.4),
        ("beta", 2.0, 2.0),
        ("beta", 0.2, 1.0),
        ("beta", 1.0, 0.2),
        ("uniform", None, None),
    ]


def test_cmdpi_fig13_alpha_grid_contains_the_papers_setting():
    rows = _tuples("cmdpi_fig13.yaml", ["loss.w_con_inter", "loss.w_con_intra"])
    assert set(rows) == {(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)}
    assert (0.5, 1.0) in rows  # alpha = 0.5, alpha' = 1 (CMDPI Eq. 6)


def test_cmdpi_fig14_threshold_sweep():
    rows = _tuples("cmdpi_fig14.yaml", ["finetune.similarity_threshold"])
    assert rows == [(0.70,), (0.75,), (0.80,), (0.85,), (0.90,), (0.95,)]


def test_objectives_name_the_pipeline():
    objective = {f.stem: load_space(f).objective for f in FILES}
    assert objective["mask_ratios"] == "pretrain"
    for name in ("cmdpi_table3", "cmdpi_table4", "cmdpi_table5", "cmdpi_fig13", "cmdpi_fig14", "mixup", "full"):
        assert objective[name] == "finetune"
    assert not load_space(SPACES / "cmdpi_table5.yaml").touches_pretraining
    assert load_space(SPACES / "cmdpi_table3.yaml").touches_pretraining


# --------------------------------------------------------------------------- bad spaces


def _write(tmp_path, text, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("params:\n  loss.w_imgg: {uniform: [0.1, 1.0]}\n", "loss.w_imgg", "did you mean loss.w_img"),
        ("params:\n  loss.w_img: {uniform: [1.0, 0.5]}\n", "loss.w_img", "low > high"),
        ("params:\n  masking.asymmetric: {choice: []}\n", "masking.asymmetric", "non-empty list"),
        ("params:\n  train.lr: {loguniform: [0.0, 0.1]}\n", "train.lr", "low > 0"),
        ("params:\n  loss.w_img: {uniform: [-1.0, 1.0]}\n", "loss.w_img", "out of range"),
        ("params:\n  masking.p_img_side: {grid: [0.5, 1.5]}\n", "masking.p_img_side", "out of range"),
        ("params:\n  loss.w_img: {normal: [0.0, 1.0]}\n", "loss.w_img", "unknown or ambiguous distribution"),
        ("params:\n  finetune.mixup_dist: {choice: [uniform, gamma]}\n", "finetune.mixup_dist", "not allowed"),
        ("params:\n  model.recnet_layers: {uniform: [1, 4]}\n", "model.recnet_layers", "use int"),
        ("params:\n  loss.w_img: {int: [1, 4]}\n", "loss.w_img", "use uniform/loguniform"),
        ("params:\n  masking.asymmetric: {uniform: [0, 1]}\n", "masking.asymmetric", "bool field"),
        ("params:\n  loss.w_img: {choice: [0.5, 0.5]}\n", "loss.w_img", "twice"),
        ("params:\n  loss.w_img: {uniform: [0.1, 1.0], step: 0.4}\n", "loss.w_img", "not a multiple of step"),
        ("params:\n  tune.num_samples: {int: [1, 4]}\n", "tune.num_samples", "the sweep itself"),
        ("params:\n  loss.w_img: [0.5, 1.0]\n", "loss.w_img", "ambiguous"),
        (
            "params:\n  finetune.mixup_dist:\n    conditional:\n      beta: {finetune.mixup_fixed: 0.5}\n"
            "      fixed: {finetune.mixup_fixed: {uniform: [0.1, 0.9]}}\n",
            "finetune.mixup_fixed",
            "more than once",
        ),
        (
            "params:\n  finetune.mixup_dist:\n    conditional:\n      poisson: {}\n",
            "finetune.mixup_dist",
            "branch 'poisson'",
        ),
        ("objective: pretrain\nparams:\n  loss.w_mix: {uniform: [0.5, 1.0]}\n", "loss.w_mix", "no effect"),
        (
            "params:\n  loss.w_img: {grid: [0.5, 1.0]}\n  loss.w_txt: {uniform: [0.5, 1.0]}\n",
            "loss.w_txt",
            "either a grid",
        ),
        ("grid_points:\n  - {loss.w_img: 0.5}\n  - {loss.w_imgx: 1.0}\n", "loss.w_imgx", "unknown config key"),
        ("grid_points:\n  - {loss.w_img: 0.5}\n  - {loss.w_img: 0.5}\n", "loss.w_img", "more than once"),
    ],
)
def test_bad_spaces_raise_space_error_naming_file_and_key(tmp_path, text, key, problem):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg and problem in msg, msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "must be a mapping"),
        ("params: {}\n", "empty search space"),
        ("grid_points: []\n", "empty search space"),
        ("objective: evaluate\nparams:\n  loss.w_img: 1.0\n", "objective"),
        ("parms:\n  loss.w_img: 1.0\n", "unknown top-level key"),
        ("params: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_space_files(tmp_path, text, problem):
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError, match=problem) as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_missing_file():
    with pytest.raises(SpaceError, match="does not exist"):
        load_space("search_spaces/nope.yaml")


def test_validate_against_catches_cross_field_constraints(tmp_path, configs):
    path = _write(
        tmp_path,
        "params:\n  masking.mask_ratio_high: {uniform: [0.3, 0.9]}\n  masking.mask_ratio_low: {uniform: [0.1, 0.6]}\n",
    )
    space = load_space(path)  # each field is in range on its own ...
    with pytest.raises(SpaceError, match="mask_ratio_low") as err:
        space.validate_against(configs[0])  # ... but low > high is reachable
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- grids, sampling, apply


def test_grid_enumeration_is_points_times_grid_params_with_fixed_values(tmp_path):
    path = _write(
        tmp_path,
        "params:\n  loss.w_mix: 1.0\n  loss.w_diff: {grid: [0.5, 1.0]}\n"
        "grid_points:\n  - {finetune.mixup_dist: uniform}\n  - {finetune.mixup_dist: fixed, finetune.mixup_fixed: 0.3}\n",
    )
    space = load_space(path)
    assert space.is_grid and space.num_grid_points == 4
    assert space.grid_points() == [
        {"finetune.mixup_dist": "uniform", "loss.w_mix": 1.0, "loss.w_diff": 0.5},
        {"finetune.mixup_dist": "uniform", "loss.w_mix": 1.0, "loss.w_diff": 1.0},
        {"finetune.mixup_dist": "fixed", "finetune.mixup_fixed": 0.3, "loss.w_mix": 1.0, "loss.w_diff": 0.5},
        {"finetune.mixup_dist": "fixed", "finetune.mixup_fixed": 0.3, "loss.w_mix": 1.0, "loss.w_diff": 1.0},
    ]
    with pytest.raises(SpaceError, match="grid_points"):
        space.define_by_run(optuna.create_study().ask())


def test_conditional_grid_enumerates_each_branch(tmp_path):
    path = _write(
        tmp_path,
        "params:\n  finetune.mixup_dist:\n    conditional:\n      uniform:\n"
        "      fixed: {finetune.mixup_fixed: {grid: [0.3, 0.7]}}\n",
    )
    assert load_space(path).grid_points() == [
        {"finetune.mixup_dist": "uniform"},
        {"finetune.mixup_dist": "fixed", "finetune.mixup_fixed": 0.3},
        {"finetune.mixup_dist": "fixed", "finetune.mixup_fixed": 0.7},
    ]


def test_sampled_space_is_not_a_grid():
    space = load_space(SPACES / "mixup.yaml")
    assert not space.is_grid and space.num_grid_points == 0
    with pytest.raises(SpaceError, match="not a grid"):
        space.grid_points()


def test_define_by_run_respects_conditionals(configs):
    space = load_space(SPACES / "mixup.yaml")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = space.define_by_run(trial)
        dist = params["finetune.mixup_dist"]
        seen.add(dist)
        expected = {
            "uniform": set(),
            "beta": {"finetune.mixup_beta_a", "finetune.mixup_beta_b"},
            "fixed": {"finetune.mixup_fixed"},
        }[dist] | {"finetune.mixup_dist"}
        assert set(params) == expected
        assert set(trial.params) == expected  # Optuna was never asked for another branch's params
        if dist == "beta":
            assert 0.1 <= params["finetune.mixup_beta_a"] <= 4.0 and 0.1 <= params["finetune.mixup_beta_b"] <= 4.0
        if dist == "fixed":
            assert 0.1 <= params["finetune.mixup_fixed"] <= 0.9
        cfg = apply_params(configs[0], params)
        assert cfg.finetune.mixup_dist == dist
        study.tell(trial, float(len(params)))
    assert seen == {"uniform", "beta", "fixed"}


def test_define_by_run_with_tpe_on_the_full_space_and_rays_captor():
    space = load_space(SPACES / "full.yaml")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    for i in range(5):
        trial = study.ask()
        params = space.define_by_run(trial)
        assert params["masking.asymmetric"] == ("masking.mask_ratio_high" in params)
        assert params["masking.asymmetric"] != ("masking.mask_ratio_img" in params)
        study.tell(trial, float(i))
    try:  # Ray's OptunaSearch merges what the captor saw with what define-by-run returns
        from ray.tune.search.optuna.optuna_search import _OptunaTrialSuggestCaptor
    except ImportError:
        return
    captor = _OptunaTrialSuggestCaptor(study.ask())
    params = space.define_by_run(captor)
    assert captor.captured_values.items() <= params.items()


def test_sample_without_optuna_is_reproducible():
    space = load_space(SPACES / "full.yaml")
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))
    grid = load_space(SPACES / "cmdpi_fig14.yaml")
    assert grid.sample(random.Random(0)) in grid.grid_points()


def test_apply_params_copies_validates_and_rejects(configs):
    base = configs[0]
    cfg = apply_params(base, {"loss.w_img": 0.5, "finetune.mixup_dist": "beta"})
    assert cfg.loss.w_img == 0.5 and cfg.finetune.mixup_dist == "beta"
    assert base.loss.w_img == 1.0 and base.finetune.mixup_dist == "uniform"  # input untouched
    with pytest.raises(ConfigError, match="mask_ratio_low"):
        apply_params(base, {"masking.mask_ratio_low": 0.9, "masking.mask_ratio_high": 0.5})
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_params(base, {"loss.nope": 1.0})


def test_space_is_a_frozen_value():
    space = load_space(SPACES / "cmdpi_table4.yaml")
    assert isinstance(space, SearchSpace)
    assert space.keys() == ["loss.w_mix", "loss.w_diff"]
    assert space.description.startswith("CMDPI Table 4")


def test_a_space_whose_setting_the_masking_ignores_is_refused(tmp_path):
    from raymmr.config import load_config
    from raymmr.tune.space import SpaceError, load_space

    path = tmp_path / "s.yaml"
    path.write_text("objective: pretrain\nparams:\n  masking.mask_ratio_img: {uniform: [0.4, 0.9]}\n")
    with pytest.raises(SpaceError, match="mask_ratio_img: no effect with masking.asymmetric=true"):
        load_space(str(path)).validate_against(load_config("tiny"))
    load_space(str(path)).validate_against(load_config("tiny", method="cmdpi"))  # symmetric: it acts
    load_space(str(SPACES / "mask_ratios.yaml")).validate_against(load_config("tiny"))  # conditional: fine
