"""The config tree: presets, overrides, validation errors, save/load round trip, job CLI errors."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from raymmr.config import ConfigError, all_paths, check_value, load_config, save_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.model.image_size % cfg.model.patch_size == 0


def test_overrides_are_typed():
    cfg = load_config("tiny", ["loss.w_img=0.5", "train.zero_stage=3", "masking.asymmetric=false", "train.steps=7"])
    assert cfg.loss.w_img == 0.5 and cfg.train.zero_stage == 3
    assert cfg.masking.asymmetric is False and cfg.train.steps == 7 and isinstance(cfg.train.steps, int)


def test_min_max_workers_is_an_elastic_range_not_base_60(tmp_path):
    """YAML 1.1 reads 2:4 as the base-60 number 124: on a cluster, each trial would ask for 124 workers."""
    from raymmr.config import worker_count

    cfg = load_config("tiny", ["train.num_workers=2:4"])
    assert worker_count(cfg.train.num_workers) == (2, 4)
    (tmp_path / "elastic.yaml").write_text("preset: tiny\ntrain:\n  num_workers: 2:4\n")  # unquoted, in a file
    assert worker_count(load_config(str(tmp_path / "elastic.yaml")).train.num_workers) == (2, 4)
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(str(tmp_path / "saved.yaml")) == cfg
    assert worker_count(load_config("tiny", ["train.num_workers=3"]).train.num_workers) == 3
    (tmp_path / "old.yaml").write_text("preset: tiny\ntrain:\n  num_workers: 2\n")  # a run saved as an int
    assert worker_count(load_config(str(tmp_path / "old.yaml")).train.num_workers) == 2
    for bad in ("0", "4:2", "2:x", "1:2:3", "1.5"):
        with pytest.raises(ConfigError, match="train.num_workers"):
            load_config("tiny", [f"train.num_workers={bad}"])


# Texts YAML 1.1 would turn into something else: base-60 ints and floats, yes/no/on/off booleans,
# null, a bare number.
TRICKY_TEXTS = ("2:4", "1:30:00", "no", "off", "Yes", "null", "~", "1e3", "0x10", "")


def field_sample(typ, current):
    """A value of the field's type to write as text: (text, the value the field must hold)."""
    if typ is bool:
        return ("false", False) if current else ("true", True)
    if typ is int:
        return "7", 7
    if typ is float:
        return "1e-3", 0.001
    return None


def test_every_field_reads_its_own_type_from_set_and_from_yaml():
    """Each config field, written as text by --set and in a YAML file, comes back as its own type;
    a free-text field keeps any text verbatim (YAML 1.1 would read 'no' as False, '2:4' as 124)."""
    import yaml

    from raymmr.config import TextLoader, field_spec, parse_override

    cfg = load_config("base")
    checked = set()
    for path in all_paths():
        section, name = path.split(".", 1)
        f, typ = field_spec(path)
        current = getattr(getattr(cfg, section), name)
        if typ is str and not f.metadata.get("choices") and not f.metadata.get("parse"):
            cases = [(text, text) for text in TRICKY_TEXTS]
        elif (sample := field_sample(typ, current)) is not None:
            cases = [sample]
        else:
            continue
        for text, want in cases:
            from_file = yaml.load(f"{name}: '{text}'" if text in ("", "~", "null") else f"{name}: {text}",
                                  Loader=TextLoader)[name]
            for how, raw in (("--set", parse_override(path, text)), ("yaml", from_file)):
                try:
                    got = check_value(path, raw)
                except ConfigError as e:  # out of this field's range: the error names the key
                    assert path in str(e) and typ is not str, (path, text, how)
                    continue
                assert got == want and type(got) is type(want), (path, text, how, got)
                checked.add(path)
    assert len(checked) > 60, len(checked)  # the loop saw the config's fields, not an empty list
    assert load_config("tiny", ["data.tokenizer=no"]).data.tokenizer == "no"
    with pytest.raises(ConfigError, match="train.steps.*'2:4'"):
        load_config("tiny", ["train.steps=2:4"])
    assert load_config("tiny", ["perturbation.image_ops=[noise, blur]"]).perturbation.image_ops == ["noise", "blur"]


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError, match="no_such_weight") as e:
        load_config("tiny", ["loss.no_such_weight=1"])
    assert "loss." in str(e.value)
    with pytest.raises(ConfigError, match="did you mean loss.w_img"):
        load_config("tiny", ["loss.w_imgg=1"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("masking.mask_ratio_img=1.5", ["masking.mask_ratio_img", "1.5", "0.0", "0.99"]),
        ("train.zero_stage=7", ["train.zero_stage", "7", "0", "3"]),
        ("train.precision=fp8", ["train.precision", "fp8", "bf16"]),
        ("train.steps=ten", ["train.steps", "ten", "int"]),
    ],
)
def test_bad_values_name_key_value_and_range(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    for w in words:
        assert w in str(e.value)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        load_config("tiny", ["model.patch_size=7"])
    with pytest.raises(ConfigError, match="mask_ratio_low"):
        load_config("tiny", ["masking.mask_ratio_low=0.9", "masking.mask_ratio_high=0.5"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("tiny", ["loss.w_txt=0.25", "finetune.mixup_dist=beta", "perturbation.image_ops=noise,blur"])
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(str(tmp_path / "config.yaml"))
    assert back == cfg


def test_short_yaml_extends_preset(tmp_path):
    (tmp_path / "mine.yaml").write_text("preset: tiny\nloss:\n  w_ans: 2.0\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg.loss.w_ans == 2.0 and cfg.model.image_size == load_config("tiny").model.image_size


def test_every_path_checks():
    cfg = load_config("base")
    for path in all_paths():
        section, name = path.split(".", 1)
        check_value(path, getattr(getattr(cfg, section), name))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("loss.no_such_weight=1", "no_such_weight"),
        ("masking.mask_ratio_img=1.5", "0.0 <= masking.mask_ratio_img <= 0.99"),
    ],
)
def test_job_rejects_bad_config_before_ray(tmp_path, override, needle):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "pretrain.py"),
            "--config",
            "tiny",
            "--set",
            override,
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_cmdpi_method_plans_exactly_cmdpis_terms(preset):
    """CMDPI alone: Eq. 5-6 pre-training terms on symmetric random masks of clean input; Eq. 13
    fine-tuning (mix + diff, and nothing else) on unperturbed input, on every preset."""
    from raymmr.objective.task import plan_passes

    cfg = load_config(preset, method="cmdpi")
    assert cfg.method == "cmdpi"
    assert set(plan_passes("pretrain", cfg.loss).terms) == {
        "rec_img_global", "rec_txt_global", "rec_ans_global", "rec_img_local", "rec_txt_local", "rec_ans_local",
        "con_inter", "con_intra"}  # fmt: skip
    assert plan_passes("finetune", cfg.loss).terms == ("diff_img", "diff_txt", "mix")
    assert plan_passes("finetune", load_config(preset).loss).terms == ("diff_img", "diff_txt", "mix")  # combined
    assert not cfg.masking.asymmetric and not cfg.perturbation.in_finetune
    combined = load_config(preset)
    assert cfg.masking == dataclasses.replace(combined.masking, asymmetric=False)  # symmetric at mask_ratio_img/txt
    assert combined.method == "combined" and combined.masking.asymmetric and combined.loss.w_dom_consist > 0


@pytest.mark.parametrize("overrides", [["loss.w_ans_finetune=1"], ["loss.w_ans_finetune=0.5", "loss.w_mix=0"],
                                       ["loss.w_ans_finetune=1", "loss.w_diff=0"]])  # fmt: skip
def test_answer_ce_beside_cmdpis_finetuning_is_refused(overrides):
    """Eq. 13 has no direct answer CE: with mix or diff on, w_ans_finetune > 0 is refused in one line
    that names the keys and both fixes."""
    from raymmr.objective.task import plan_passes

    cfg = load_config("tiny", overrides, method="cmdpi")  # loads: an export trained before the rule must
    with pytest.raises(ConfigError) as e:  # but no fine-tuning is planned with it (the driver, before Ray)
        plan_passes("finetune", cfg.loss, cfg.finetune)
    message = str(e.value)
    assert "\n" not in message
    for words in ("loss.w_ans_finetune", "loss.w_mix", "loss.w_diff", "Eq. 13", "set loss.w_ans_finetune=0",
                  "loss.w_mix=0 and loss.w_diff=0"):  # fmt: skip
        assert words in message, message


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_the_plain_finetuning_arm_stays_valid(preset):
    """METHOD_GROUPS["cmdpi_finetune"] removed: the answer CE alone."""
    from raymmr.config import without_groups
    from raymmr.objective.task import plan_passes

    cfg = load_config(preset, without_groups(["cmdpi_finetune"]))
    assert (cfg.loss.w_mix, cfg.loss.w_diff, cfg.loss.w_ans_finetune) == (0, 0, 1)
    plan = plan_passes("finetune", cfg.loss, cfg.finetune)
    assert plan.terms == ("rec_ans_global",) and plan.answer_pass and not plan.deviated


def test_mix_source_choices():
    assert load_config("tiny").finetune.mix_source == "diff"
    assert load_config("tiny", ["finetune.mix_source=whole_question"]).finetune.mix_source == "whole_question"
    with pytest.raises(ConfigError, match="finetune.mix_source"):
        load_config("tiny", ["finetune.mix_source=answer"])


def test_method_is_saved_and_a_saved_runs_own_values_win(tmp_path):
    cfg = load_config("tiny", ["loss.w_dom_consist=0.3"], method="cmdpi")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again == cfg and again.loss.w_dom_consist == 0.3 and not again.masking.asymmetric
    with pytest.raises(ConfigError, match="choose one of combined, cmdpi"):
        load_config("tiny", method="robust")


def test_paper_grids_run_cmdpi_alone():
    from raymmr.tune.space import load_space

    spaces = sorted((Path(__file__).parent.parent / "search_spaces").glob("cmdpi_*.yaml"))
    assert len(spaces) == 5
    assert all(load_space(str(p)).method == "cmdpi" for p in spaces)


def test_mask_overrides_that_would_be_ignored_are_refused():
    with pytest.raises(ConfigError, match="masking.mask_ratio_img: no effect with masking.asymmetric=true"):
        load_config("tiny", ["masking.mask_ratio_img=0.5"])
    with pytest.raises(ConfigError, match="mask_ratio_high: no effect with masking.asymmetric=false"):
        load_config("tiny", ["masking.mask_ratio_high=0.8"], method="cmdpi")
    assert load_config("tiny", ["masking.mask_ratio_img=0.5"], method="cmdpi").masking.mask_ratio_img == 0.5
    assert load_config("tiny", ["masking.asymmetric=false", "masking.mask_ratio_img=0.5"]).masking.mask_ratio_img == 0.5
    with pytest.raises(ConfigError, match="perturbation.finetune_share: no effect with perturbation.in_finetune=false"):
        load_config("tiny", ["perturbation.in_finetune=false", "perturbation.finetune_share=0.5"])


def test_base_trains_on_gpus_and_compile_refuses_zero3():
    assert load_config("base").train.gpus_per_worker == 1 and load_config("tiny").train.gpus_per_worker == 0
    assert load_config("tiny", ["train.compile=true"]).train.compile
    with pytest.raises(ConfigError, match="train.compile=true with train.zero_stage=3"):
        load_config("tiny", ["train.compile=true", "train.zero_stage=3"])
