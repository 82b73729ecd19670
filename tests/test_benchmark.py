"""The GPU benchmark harness, exercised on CPU: its FLOP accounting and one real run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raymmr.objective.flops import training_flops_per_sample, transformer_layer
from raymmr.train.benchmark import append_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_transformer_layer_flops_by_hand():
    # tokens 10, width 4, mlp 16: qkv+out 4 matmuls of [10,4]x[4,4] = 4*2*10*4*4 = 1280;
    # mlp [10,4]x[4,16] and [10,16]x[16,4] = 2*2*10*4*16 = 2560; scores and weighted sum
    # [10,4]x[4,10] and [10,10]x[10,4] = 2*2*10*10*4 = 1600.
    assert transformer_layer(10, 4, 16) == 1280 + 2560 + 1600


def test_tiny_model_flops_by_hand():
    """The tiny preset's pre-training count rebuilt from the layer formula and its shapes."""
    from raymmr.config import load_config
    from raymmr.model.model import RaymmrModel

    cfg = load_config("tiny", ["loss.w_con_inter=0", "loss.w_con_intra=0", "loss.w_dom_consist=0",
                               "loss.w_mod_resil=0", "loss.w_txt=0", "loss.w_ans=0"])
    model = RaymmrModel(cfg.model, vocab_size=100, num_answers=7, pad_token_id=0, mask_token_id=4)
    n, p, w, length, d = 64, 8, 128, cfg.model.max_text_len, 128
    # image tower: patch embed + 2 layers over 64 patches + class token; text tower: 2 layers
    image = 2 * n * 3 * p * p * w + 2 * transformer_layer(n + 1, w, 4 * w)
    text = 2 * transformer_layer(length, w, 4 * w)
    fusion = 2 * (w + w) * d + 2 * d * d
    local = 2 * n * w * d + 2 * length * w * d  # projections of the local features to the RecNet width
    recnet = 2 * transformer_layer(n + length + 2, d, 4 * d)
    img_head = n * (2 * d * d + 2 * d * 3 * p * p)
    # clean pass (for h_F) + masked pass + global and local RecNet with the image head, fwd+bwd
    expected = 3 * ((image + text + fusion) + (image + text + local) + 2 * (recnet + img_head))
    assert training_flops_per_sample(model, "pretrain", cfg.loss, cfg.masking) == pytest.approx(expected, rel=1e-9)


def test_plain_step_averages_accumulated_gradients_then_clips():
    import torch

    from raymmr.config import load_config
    from raymmr.train.benchmark import PlainStep

    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0)
    step = PlainStep(torch.nn.ParameterList([w]), opt, load_config("tiny", ["train.grad_accum=2", "train.grad_clip=1"]).train)
    for target in (torch.tensor([4.0, 0, 0]), torch.tensor([0, 4.0, 0])):
        step.backward(-(w * target).sum())  # gradient -target
        step.step()
        if step.micro == 1:
            assert torch.equal(w.detach(), torch.zeros(3))  # no update inside the accumulation
    # mean gradient (-2, -2, 0), norm 2.83 clipped to 1: w moves by (0.707, 0.707, 0)
    torch.testing.assert_close(w.detach(), torch.tensor([0.7071, 0.7071, 0.0]), atol=1e-4, rtol=0)
    assert w.grad is None


def test_markdown_rows_go_into_their_section(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## Data loader (CPU)\n\n| a |\n|---|\n| 1 |\n\n## Later\n\ntext\n")
    row = {"device": "NVIDIA H100 80GB HBM3", "stage": "pretrain", "zero_stage": 2, "batch_size": 128,
           "precision": "bf16", "compile": True, "samples_per_s": 100.0, "tflops": 300.0, "mfu": 0.38,
           "mfu_datasheet": 300 / 989.4, "peak_tflops_datasheet": 989.4, "peak_memory_gb": 40.0, "data_wait": 0.01}
    failed = {"device": "NVIDIA H100 80GB HBM3", "stage": "pretrain", "zero_stage": 1, "batch_size": 512,
              "compile": False, "error": "OutOfMemoryError: CUDA out of memory | tried 2 GiB"}
    append_markdown([row, failed], str(md), "python jobs/benchmark.py")
    text = md.read_text()
    assert text.index("## Data loader") < text.index("## Later") < text.index("## Training step") < text.index("38.0%")
    table = [line for line in text.splitlines() if line.startswith("|") and "pretrain" in line]
    header = next(line for line in text.splitlines() if line.startswith("| date | device"))
    assert all(line.count(" | ") == header.count(" | ") for line in table), table  # every row fills every column
    assert "| on | 100.0 | 300.00 | 38.0% | 30.3% of 989 |" in table[0]
    assert "| off | — |" in table[1] and table[1].endswith("| failed: OutOfMemoryError: CUDA out of memory / tried 2 GiB |")


def test_the_readme_benchmarks_table_has_the_columns_the_job_writes():
    from raymmr.train.benchmark import TABLE_COLUMNS, TABLE_HEADER

    text = (ROOT / "BENCHMARKS.md").read_text()
    lines = text.split(TABLE_HEADER, 1)[1].split("\n## ", 1)[0].splitlines()
    header = next(line for line in lines if line.startswith("|"))
    assert header == TABLE_COLUMNS
    rows = [line for line in lines[lines.index(header) + 2:] if line.startswith("|")]
    assert rows and all(row.count(" | ") == header.count(" | ") for row in rows)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
    ("Tesla T4", None)])
def test_datasheet_peak_by_device_name(name, tflops):
    from raymmr.train.metrics import datasheet_peak_flops

    assert datasheet_peak_flops(name) == (tflops * 1e12 if tflops else None)


def test_benchmark_configs_parse_and_refuse_what_is_not_zero_batch():
    from raymmr.errors import JobError
    from raymmr.jobs.benchmark import grid, parse_configs

    assert parse_configs("plain:256, 2:256,0:128") == [("plain", 256), (2, 256), (0, 128)]
    assert grid("1,2", [64, 128], True) == [("plain", 64), ("plain", 128), (1, 64), (1, 128), (2, 64), (2, 128)]
    for bad in ("2", "two:128", "2:big", ""):
        with pytest.raises(JobError, match="--configs"):
            parse_configs(bad)


def test_benchmark_job_keeps_going_after_a_failing_configuration_and_writes_each_row_at_once(tmp_path, monkeypatch):
    """A configuration that fails (out of memory, say) becomes a row naming the error, the others
    still run, each row is on disk before the next configuration starts, and the job ends non-zero."""
    import raymmr.data.making.sets as sets
    import raymmr.train.benchmark as bench
    from raymmr.errors import JobError
    from raymmr.jobs.benchmark import main

    out, md = tmp_path / "b", tmp_path / "B.md"
    seen = []

    def fake(cfg, *, stage, data, steps, warmup, plain, profile):
        seen.append([r["zero_stage"] for f in out.glob("*.json") for r in json.loads(f.read_text())])
        if cfg.train.zero_stage == 1 and not plain:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")
        return {"stage": stage, "preset": cfg.preset, "zero_stage": "plain" if plain else cfg.train.zero_stage,
                "batch_size": cfg.train.batch_size, "precision": "fp32", "compile": False, "device": "cpu",
                "samples_per_s": 10.0 if plain else 12.0, "tflops": 0.1, "mfu": None, "mfu_datasheet": None,
                "peak_tflops_datasheet": None, "peak_memory_gb": None, "data_wait": 0.01,
                **({"profile": f"ops of {cfg.train.zero_stage}"} if profile else {})}

    monkeypatch.setattr(bench, "benchmark", fake)
    monkeypatch.setattr(sets, "resolve_data", lambda cfg, data: "unused")
    with pytest.raises(JobError, match=r"1 of 3 configurations failed .*1:8 \(RuntimeError: CUDA out of memory"):
        main(["--configs", "plain:8,1:8,2:8", "--out", str(out), "--markdown", str(md),
              "--profile", str(tmp_path / "profile.txt")])
    assert seen == [[], ["plain"], ["plain", 1]]
    rows = json.loads(next(out.glob("benchmark-*.json")).read_text())
    assert [r["zero_stage"] for r in rows] == ["plain", 1, 2]
    assert rows[1]["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" and rows[1]["vs_plain"] is None
    assert rows[2]["vs_plain"] == pytest.approx(1.2)
    assert md.read_text().count("| cpu |") == 3 and "failed: RuntimeError" in md.read_text()
    profile = (tmp_path / "profile.txt").read_text()  # one section per configuration measured, none in the JSON
    assert profile.count("== pretrain tiny: ZeRO") == 2 and "ZeRO 2, batch 8" in profile and "ops of 2" in profile
    assert all("profile" not in r for r in rows)


def test_benchmark_job_runs_the_grid_after_the_plain_loop(tmp_path, monkeypatch):
    import raymmr.data.making.sets as sets
    import raymmr.train.benchmark as bench
    from raymmr.jobs.benchmark import main

    ran = []

    def fake(cfg, *, stage, data, steps, warmup, plain, profile):
        ran.append(("plain" if plain else cfg.train.zero_stage, cfg.train.batch_size))
        return {"stage": stage, "preset": cfg.preset, "zero_stage": ran[-1][0], "batch_size": cfg.train.batch_size,
                "samples_per_s": 1.0}

    monkeypatch.setattr(bench, "benchmark", fake)
    monkeypatch.setattr(sets, "resolve_data", lambda cfg, data: "unused")
    main(["--zero-stages", "0,2", "--batch-sizes", "4,8", "--baseline", "plain", "--out", str(tmp_path)])
    assert ran == [("plain", 4), ("plain", 8), (0, 4), (0, 8), (2, 4), (2, 8)]
    ran.clear()
    main(["--out", str(tmp_path)])  # the preset's batch size and ZeRO-2, no baseline
    assert ran == [(2, 32)]


def test_benchmark_job_refuses_a_bad_configuration_before_measuring_any(tmp_path, monkeypatch):
    import raymmr.train.benchmark as bench
    from raymmr.config import ConfigError
    from raymmr.errors import JobError
    from raymmr.jobs.benchmark import main

    monkeypatch.setattr(bench, "benchmark", lambda *a, **k: pytest.fail("measured before checking every configuration"))
    with pytest.raises(ConfigError, match="zero_stage"):
        main(["--configs", "plain:8,7:8", "--out", str(tmp_path)])
    with pytest.raises(JobError, match="leave out --zero-stages"):
        main(["--configs", "plain:8", "--zero-stages", "2", "--out", str(tmp_path)])


def run_gpu_check(out, **env):
    import os

    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_INSTALL": "0", **env}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    return proc, log


@pytest.mark.slow
def test_gpu_check_script_dry_runs_on_cpu(ray_local, tiny_data, tmp_path):
    """scripts/gpu_check.sh without a GPU: the GPU tests are collected and skip, the eager grid runs
    beside the plain loop, then the "compiled" step (compile stays off on CPU) runs the plain loop and
    the fastest eager DeepSpeed configuration, chosen from the rows the grid wrote. Another Ray on
    the machine (this test run's) outlives the script: it ends only the Ray its own tests left."""
    out = tmp_path / "gpu"
    proc, log = run_gpu_check(out)
    assert ray_local.get(ray_local.remote(lambda: 1).remote(), timeout=60) == 1
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log
    assert "mode cpu" in log and "skipped" in (out / "gpu-tests.log").read_text()
    table = (out / "BENCHMARKS.md").read_text()
    assert table.count("| cpu |") == 5 and table.count("x the plain loop (overhead") == 3, table
    rows = [r for f in sorted((out / "bench").glob("benchmark-*.json")) for r in json.loads(f.read_text())]
    eager = [r for r in rows[:3] if r["zero_stage"] != "plain"]
    best = max(eager, key=lambda r: r["samples_per_s"])
    assert [r["zero_stage"] for r in rows] == ["plain", 0, 2, "plain", best["zero_stage"]]
    assert all(r["samples_per_s"] > 0 and r["gflops_per_sample"] > 0 and 0 <= r["data_wait"] <= 1 for r in rows)
    assert rows[0]["vs_plain"] is None and rows[3]["vs_plain"] is None
    assert all(r["vs_plain"] == pytest.approx(r["samples_per_s"] / rows[0]["samples_per_s"]) for r in rows[1:3])
    assert rows[4]["vs_plain"] == pytest.approx(rows[4]["samples_per_s"] / rows[3]["samples_per_s"])
    assert "jobs/benchmark.py" in table and "the plain PyTorch loop (no DeepSpeed)" in table
    assert f"plain:4,{best['zero_stage']}:4" in log
    # the compiled pair profiled, each under a title naming it, the step's parts among the ops
    profile = (out / "profile.txt").read_text()
    assert profile.count("== pretrain tiny: ZeRO ") == 2 and "ZeRO plain, batch 4" in profile, profile[:2000]
    assert "step/forward" in profile and "step/backward" in profile
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files  # what a device call brings back


def test_gpu_check_script_skips_what_its_budget_cannot_hold(tmp_path):
    """With no time left every step is skipped and said to be, and the script does not claim success."""
    out = tmp_path / "gpu"
    proc, log = run_gpu_check(out, GPU_CHECK_BUDGET_S="3")
    assert proc.returncode == 1, log
    assert "benchmark eager: skipped" in log and "pytest -m gpu: skipped" in log
    assert "benchmark compiled: skipped" in log and "done (exit 1)" in log


def test_table_rows_stay_in_their_own_section(tmp_path):
    """A row appended to a section's table lands there, not after a table of a later section."""
    from raymmr.data.benchmark import append_table_rows

    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n## A\n\n| a |\n|---|\n| 1 |\n\nnotes\n\n## B\n\n| b |\n|---|\n| 9 |\n")
    append_table_rows(md, "## A", "| a |\n|---|", ["| 2 |"])
    append_table_rows(md, "## C", "| c |\n|---|", ["| 3 |"])
    lines = md.read_text().splitlines()
    assert lines.index("| 2 |") == lines.index("| 1 |") + 1 < lines.index("## B") < lines.index("| 9 |")
    assert lines[-1] == "| 3 |" and lines.index("## C") > lines.index("| 9 |")
