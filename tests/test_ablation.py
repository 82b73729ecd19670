"""raymmr.ablation's bookkeeping, with the pipeline replaced by a recorder: which variants share a
pre-training, how a rerun keeps finished variants, and the side-by-side table."""

import json

import pytest

import raymmr.pipeline
from raymmr import storage
from raymmr.ablation import markdown, run_ablation
from raymmr.errors import JobError


@pytest.fixture
def recorded(monkeypatch, tiny_data):
    class Calls(list):
        pass

    calls = Calls()

    def fake_pipeline(cfg, out, data, *, pretrained=None, text_only=True, final_test=False, **_):
        calls.append((out.split("/")[-2], cfg.train.seed, pretrained))  # out: <ablation>/<variant>/seed<n>
        text_only_calls.append((out.split("/")[-2], cfg.train.seed, text_only))
        assert not final_test, "the ablation's reading is a choice: it never evaluates the test split"
        if pretrained is None:
            storage.write_text(storage.join(out, "pretrain", "export", "model.safetensors"), "weights")
        if text_only is True:
            storage.write_text(storage.join(out, "finetune_text_only", "export", "model.safetensors"), "weights")
        acc = 0.5 if cfg.loss.w_dom_consist > 0 else 0.4
        results = {"vqa_overall": acc + cfg.train.seed / 100, "retrieval_mean_rank": 10.0, "split": "val"}
        storage.write_text(storage.join(out, "eval", "val", "results.json"), json.dumps(results))
        # 20 questions about 10 images, 2 per image: the Robust-MMR arms answer image 0-4's right,
        # the others image 0-3's (one image more right: +10 points, in the training domains only).
        right = 5 if cfg.loss.w_dom_consist > 0 else 4
        rows = [{"key": f"q{i:02d}", "image": i // 2, "in_domain": i < 10,
                 "correct": {"clean": int(i // 2 < right), "strong": int(i // 2 < right)}} for i in range(20)]
        storage.write_text(storage.join(out, "eval", "val", "questions.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in rows))
        return {"val": results}

    text_only_calls = []
    calls.text_only = text_only_calls

    monkeypatch.setattr(raymmr.pipeline, "run_pipeline", fake_pipeline)
    return calls


def test_fine_tuning_only_variants_share_a_pre_training_and_seeds_average(recorded, tmp_path, tiny_data):
    report = run_ablation("tiny", [], ["full", "no_robust_mmr", "no_cmdpi_finetune", "neither"], [0, 2],
                          tmp_path, tiny_data, log=lambda _: None)  # fmt: skip
    pretrained = {(v, s): p for v, s, p in recorded}
    assert pretrained[("full", 0)] is None and pretrained[("no_robust_mmr", 0)] is None
    assert pretrained[("no_cmdpi_finetune", 0)] == str(tmp_path / "full" / "seed0" / "pretrain" / "export")
    assert pretrained[("neither", 2)] == str(tmp_path / "no_robust_mmr" / "seed2" / "pretrain" / "export")
    assert report["mean"]["full"]["vqa_overall"] == pytest.approx(0.51)  # (0.50 + 0.52) / 2
    assert report["mean"]["neither"]["vqa_overall"] == pytest.approx(0.41)
    table = (tmp_path / "ablation.md").read_text()
    assert "| full | 51.0 ± 1.4% | — | — | — | — | — | — | 10.00 ± 0.00 | — |" in table
    # Paired on the same questions, over both seeds: without Robust-MMR one image fewer is right.
    paired = report["paired"]
    assert set(paired) == {"no_robust_mmr", "no_cmdpi_finetune", "neither"}
    assert paired["no_robust_mmr"]["clean"]["mean"] == pytest.approx(-0.1)
    assert paired["no_robust_mmr"]["train domains"]["mean"] == pytest.approx(-0.2)
    assert paired["no_robust_mmr"]["unseen domain"]["ci"] == [0.0, 0.0]  # no question there differs
    assert paired["no_cmdpi_finetune"]["clean"] == {"mean": 0.0, "ci": [0.0, 0.0]}
    assert "| no_robust_mmr − full | -10.0 [" in table and "(no effect shown)" in table
    assert report["split"] == "val"
    assert report["std"]["full"]["vqa_overall"] == pytest.approx(0.01414, abs=1e-4)
    # One text-only model per seed, fine-tuned by the seed's first variant, compared with by all.
    text_only = {(v, s): t for v, s, t in recorded.text_only}
    assert text_only[("full", 0)] is True and text_only[("full", 2)] is True
    assert text_only[("neither", 2)] == str(tmp_path / "full" / "seed2" / "finetune_text_only" / "export")
    assert json.loads((tmp_path / "ablation.json").read_text())["mean"] == report["mean"]


def test_rerun_keeps_finished_variants_and_sets_unfinished_ones_aside(recorded, tmp_path, tiny_data):
    run_ablation("tiny", [], ["full"], [0], tmp_path, tiny_data, log=lambda _: None)
    (tmp_path / "no_cmdpi_finetune" / "seed0" / "finetune").mkdir(parents=True)  # a crashed attempt
    recorded.clear()
    run_ablation("tiny", [], ["full", "no_cmdpi_finetune"], [0], tmp_path, tiny_data, log=lambda _: None)
    assert recorded == [("no_cmdpi_finetune", 0, str(tmp_path / "full" / "seed0" / "pretrain" / "export"))]
    assert len(list((tmp_path / "no_cmdpi_finetune").glob("seed0.unfinished-*"))) == 1


def test_ablation_in_a_bucket_reruns_like_a_local_one(recorded, s3_server, tiny_data):
    out = s3_server.url("ablations", "a1")
    run_ablation("tiny", [], ["full"], [0], out, tiny_data, log=lambda _: None)
    storage.write_text(f"{out}/no_cmdpi_finetune/seed0/finetune/events.jsonl", "{}\n")  # a crashed attempt
    recorded.clear()
    report = run_ablation("tiny", [], ["full", "no_cmdpi_finetune"], [0], out, tiny_data, log=lambda _: None)
    assert recorded == [("no_cmdpi_finetune", 0, f"{out}/full/seed0/pretrain/export")]
    keys = s3_server.keys("ablations/a1/")
    assert any(k.startswith("ablations/a1/no_cmdpi_finetune/seed0.unfinished-") for k in keys), keys
    assert json.loads(storage.read_text(f"{out}/ablation.json"))["mean"] == report["mean"]
    assert "| full |" in storage.read_text(f"{out}/ablation.md")


def test_unknown_variant_is_refused_before_training(recorded, tmp_path):
    with pytest.raises(JobError, match="choose from"):
        run_ablation("tiny", [], ["full", "robust_only"], [0], tmp_path)
    assert recorded == [] and markdown({}).count("\n") == 2


def test_each_arm_differs_from_full_only_in_its_groups_keys():
    """Robust-MMR off also stops perturbing fine-tuning inputs; CMDPI's fine-tuning off leaves the plain
    answer CE; nothing else changes."""
    from raymmr.ablation import VARIANTS, variant_overrides
    from raymmr.config import METHOD_GROUPS, load_config

    def flat(cfg):
        return {f"{section}.{k}": v for section, values in cfg.to_dict().items() if isinstance(values, dict)
                for k, v in values.items()}

    full = flat(load_config("tiny"))
    assert full["perturbation.in_finetune"] and full["masking.asymmetric"]
    for variant, groups in VARIANTS.items():
        arm = flat(load_config("tiny", variant_overrides(variant)))
        removed = {k: v for g in groups for k, v in METHOD_GROUPS[g].items()}
        assert all(arm[k] == v for k, v in removed.items()), variant
        assert {k for k in full if arm[k] != full[k]} == {k for k, v in removed.items() if full[k] != v}, variant
