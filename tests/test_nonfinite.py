"""What the training loop relies on to skip a step with non-finite gradients without a host sync
per micro-step: the pinned DeepSpeed's ZeRO-1/2 engine skips such a step itself, on every rank
(parameters untouched, ``engine.skipped_steps`` counts it), in fp32 and in bf16; ZeRO-0 does not,
which is why the loop keeps its own check there (``engine.skips_nonfinite_steps``). Run in a
subprocess: DeepSpeed needs a process group of its own."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def main() -> None:
    import torch

    from raymmr.config import load_config
    from raymmr.train.benchmark import init_single_process_group
    from raymmr.train.engine import build_engine, skips_nonfinite_steps

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x)

        def no_weight_decay(self):
            return set()

    init_single_process_group("gloo")
    out = {}
    for zero in (0, 1, 2):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            cfg = load_config("tiny", [f"train.zero_stage={zero}", f"train.precision={precision}",
                                       "train.warmup_steps=0", "train.lr=0.1"])
            engine = build_engine(Tiny(), cfg.train, lr=0.1, total_steps=10, on_gpu=False)
            x = torch.ones(2, 4, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
            moved = []
            for scale in (1.0, float("nan"), 1.0):
                before = engine.module.lin.weight.detach().float().clone()
                engine.backward(engine(x).float().sum() * scale)
                engine.step()
                after = engine.module.lin.weight.detach().float()
                moved.append("nan" if after.isnan().any() else bool((after - before).abs().max() > 0))
            out[f"zero{zero}-{precision}"] = {"moved": moved, "skipped": engine.skipped_steps,
                                              "claimed": skips_nonfinite_steps(cfg.train)}
    print(json.dumps(out))


def test_zero1_and_zero2_skip_a_nonfinite_step_on_their_own():
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for zero in (1, 2):
        for precision in ("fp32", "bf16"):
            assert r[f"zero{zero}-{precision}"] == {"moved": [True, False, True], "skipped": 1, "claimed": True}, r
    # ZeRO-0 applies the step: the loop's own check is needed there, and it says so
    assert r["zero0-fp32"]["skipped"] == 0 and r["zero0-fp32"]["moved"][1:] == ["nan", "nan"], r
    assert not r["zero0-fp32"]["claimed"] and not r["zero0-bf16"]["claimed"], r


if __name__ == "__main__":
    main()
