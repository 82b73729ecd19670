"""The momentum EMA under bf16 DeepSpeed training, on CPU bf16 and (marked gpu) on a CUDA device
with NCCL: it tracks an fp32 reference EMA, LayerNorm gains included, where an EMA in bf16 would
round its updates away. Run in a subprocess: DeepSpeed needs a process group of its own."""

import json
import subprocess
import sys

import pytest
import torch

UPDATES = 200


def main(device: str) -> None:
    import torch

    from raymmr.config import load_config
    from raymmr.model.model import RaymmrModel
    from raymmr.train.benchmark import init_single_process_group
    from raymmr.train.engine import build_engine
    from raymmr.train.momentum import MomentumEMA

    on_gpu = device == "cuda"
    init_single_process_group("nccl" if on_gpu else "gloo")
    torch.manual_seed(0)
    cfg = load_config("tiny", ["train.precision=bf16", "train.zero_stage=2", "train.lr=1e-3", "train.warmup_steps=0",
                                "model.image_size=32"])
    model = RaymmrModel(cfg.model, vocab_size=64, num_answers=3, pad_token_id=0, mask_token_id=1).to(device)
    engine = build_engine(model, cfg.train, lr=cfg.train.lr, total_steps=UPDATES, on_gpu=on_gpu)
    assert all(q.dtype == torch.bfloat16 for _, q in model.momentum_pairs()), "the engine casts the momentum copies"
    ema = MomentumEMA(model, zero3=False)
    m = cfg.model.momentum
    start = [q.detach().double().clone() for _, q in model.momentum_pairs()]
    reference = [t.clone() for t in start]  # an fp64 EMA of the same online weights
    naive = [q.detach().clone() for _, q in model.momentum_pairs()]  # what an EMA in bf16 would hold
    images = torch.randint(0, 256, (2, 3, cfg.model.image_size, cfg.model.image_size), dtype=torch.uint8,
                           device=device)
    ids = torch.randint(2, 64, (2, 16), device=device)
    mask = torch.ones_like(ids)
    for _ in range(UPDATES):
        loss = engine.module.encode_image(images).square().sum() + engine.module.encode_text(ids, mask).pow(3).sum()
        engine.backward(loss)
        engine.step()
        ema.update()
        with torch.no_grad():
            for ref, low, (p, _) in zip(reference, naive, model.momentum_pairs(), strict=True):
                ref.lerp_(p.detach().double(), 1 - m)
                low.lerp_(p.detach(), 1 - m)

    names = [n for n, _ in model.named_parameters() if n.startswith("momentum_")]
    norms = [n.endswith(".weight") and ("norm" in n.lower()) for n in names]

    def rel(values: list, keep: list[bool] | None = None) -> float:
        """Distance to the reference, relative to how far the reference moved from its start."""
        rows = [(v.double(), r, s) for v, r, s, k in zip(values, reference, start, keep or [True] * len(names),
                                                      strict=True) if k]
        err = sum(float((v - r).norm()) ** 2 for v, r, _ in rows) ** 0.5
        moved = sum(float((r - s).norm()) ** 2 for _, r, s in rows) ** 0.5
        return err / moved

    params = [q.detach() for _, q in model.momentum_pairs()]
    result = {
        "n_norm_tensors": sum(norms),
        "fp32_ema": rel(ema.state()),
        "fp32_ema_norms": rel(ema.state(), norms),
        "bf16_params": rel(params),
        "naive_bf16": rel(naive),
        "naive_bf16_norms": rel(naive, norms),
        "params_are_rounded_ema": all(torch.equal(p, e.to(p.dtype)) for p, e in zip(params, ema.state(), strict=True)),
    }
    print(json.dumps(result))


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_momentum_ema_tracks_fp32_reference_under_bf16(device):
    proc = subprocess.run([sys.executable, __file__, device], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n_norm_tensors"] > 0
    assert r["fp32_ema"] < 1e-3 and r["fp32_ema_norms"] < 1e-3, r
    assert r["params_are_rounded_ema"], r
    # An EMA kept in bf16 would not track it: the test can tell the two apart.
    assert r["naive_bf16_norms"] > 0.5, r


if __name__ == "__main__":
    main(sys.argv[1])
