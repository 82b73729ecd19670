"""The learning test: the demo pipeline on SynthRad (pre-train -> fine-tune -> evaluate, tiny
preset, fixed seed) must beat the text-only baselines by a clear margin on held-out (validation)
questions — and the same check must fail when nothing is learned (learning rate 0)."""

import json

import pytest

from raymmr.config import load_config
from raymmr.objective.task import PARTNER_RATE
from raymmr.pipeline import run_pipeline

pytestmark = pytest.mark.slow

# Over the strongest baseline that needs no training (the blank-image model, a training run of its own,
# is the demo's; this test does not pay for it). The demo's pipeline gives +6.9 points [+4.3, +9.4] on
# validation; the same config with another random stream (no in-run validation, whose passes draw from
# the global RNG) gave +3.7 (2026-12-05): the floor sits below both, and the margin's interval must
# exclude 0 (an effect shown, README "How results are measured").
MARGIN = 0.03
RULE_BASELINES = ("majority_baseline", "question_only_baseline", "type_prior_baseline")


def learned(results: dict) -> bool:
    strongest = max(results[k] for k in RULE_BASELINES)
    return results["vqa_overall"] >= strongest + MARGIN and results["margin_over_text_only_ci"][0] > 0


def test_model_learns_synthrad(ray_local, tiny_data, tmp_path):
    # The demo's pipeline, bit for bit (in-run validation included: its passes draw from the random
    # stream); its evaluation on clean inputs only (the perturbed ones measure robustness).
    cfg = load_config("tiny")
    results = run_pipeline(cfg, tmp_path / "run", tiny_data, text_only=False, severities=())["val"]
    assert results["split"] == "val"
    assert learned(results), (
        f"validation VQA accuracy {results['vqa_overall']:.3f} does not beat the baselines "
        f"{ {k: round(results[k], 3) for k in RULE_BASELINES} } by {MARGIN} with an effect shown "
        f"(margin {results['margin_over_text_only']:+.3f}, interval {results['margin_over_text_only_ci']})"
    )
    # Difference reconstruction found a similar image (the paper's threshold, the whole training
    # split) for nearly every fine-tuning sample.
    logged = [json.loads(line) for line in (tmp_path / "run" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    rates = [r[PARTNER_RATE] for r in logged if PARTNER_RATE in r]
    assert rates and min(rates) > 0.9, rates


def test_same_check_fails_without_learning(tiny_data, tmp_path):
    """The untrained model (what a pipeline with learning rate 0 exports), evaluated the same way."""
    import torch

    from raymmr.data.shards import shard_tokenizer
    from raymmr.eval.evaluate import evaluate
    from raymmr.model.export import save_export
    from raymmr.train.setup import new_model

    cfg = load_config("tiny")
    torch.manual_seed(cfg.train.seed)
    model, _, manifest = new_model(cfg, tiny_data)
    export = save_export(model.eval(), cfg, tmp_path / "export", tokenizer=shard_tokenizer(tiny_data),
                         answers=manifest["answers"])
    results = evaluate(str(export), tiny_data, str(tmp_path / "eval"), split="val", severities=())  # as above
    assert not learned(results), f"an untrained model 'learned': {results['vqa_overall']:.3f}"
    assert sum(v["n"] for v in results["vqa_by_question_type"].values()) == results["n_vqa"]
