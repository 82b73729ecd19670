"""Standard model loading: save_pretrained writes config.json, the weights, tokenizer, answers and
a model card; from_pretrained in a fresh process gives the live model's answer logits; evaluation
writes its numbers into the card."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_shards import hand_samples

from raymmr.config import load_config
from raymmr.data.making.writer import write_shards
from raymmr.data.shards import read_manifest, shard_tokenizer
from raymmr.data.tokenizer import encode_texts, load_tokenizer
from raymmr.model.model import RaymmrModel

S = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model (random weights: loading must reproduce them whatever they are), its shard set
    and its export."""
    root = tmp_path_factory.mktemp("pretrained")
    data = root / "shards"
    write_shards({"train": hand_samples("train", 24, size=S), "test": hand_samples("test", 12, size=S, start=100)},
                 data, image_size=S, samples_per_shard=12, tokenizer_vocab_size=200, progress=False)
    cfg = load_config("tiny", overrides=[f"data.image_size={S}", f"model.image_size={S}"])
    tok = load_tokenizer(shard_tokenizer(str(data)))
    answers = read_manifest(data)["answers"]
    torch.manual_seed(0)
    model = RaymmrModel(cfg.model, vocab_size=len(tok), num_answers=len(answers), pad_token_id=tok.pad_token_id,
                        mask_token_id=tok.mask_token_id).eval()
    export = model.save_pretrained(root / "export", config=cfg, tokenizer=shard_tokenizer(str(data)), answers=answers)
    return model, tok, data, export


def test_save_pretrained_writes_a_standard_folder_with_a_card(trained):
    model, _, _, export = trained
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "config.yaml", "tokenizer.json", "answers.json", "README.md"} <= names
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "raymmr" and config["architectures"] == ["RaymmrModel"]
    assert config["num_answers"] == model.num_answers and config["vocab_size"] == model.vocab_size
    assert config["model"]["recnet_width"] == model.cfg.recnet_width
    card = (export / "README.md").read_text()
    answering = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("momentum_"))
    assert f"{answering / 1e6:.2f} M" in card
    assert "not a medical device" in card and "Not evaluated yet" in card


def test_from_pretrained_in_a_fresh_process_gives_the_same_answer_logits(trained, tmp_path):
    model, tok, _, export = trained
    images = torch.randint(0, 256, (3, 3, S, S), dtype=torch.uint8)
    ids, mask = encode_texts(tok, ["Question 1?", "Is there a lesion?", "Caption number 3."], model.cfg.max_text_len)
    with torch.no_grad():
        live = model.answer_logits(images, ids, mask)
    torch.save({"images": images, "ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from raymmr.model.model import RaymmrModel\n"
        "m = RaymmrModel.from_pretrained(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    torch.save(m.answer_logits(x['images'], x['ids'], x['mask']), sys.argv[3])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(export.parent), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "logits.pt")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(loaded, live, rtol=0, atol=1e-6)  # the run folder's export/ was found
    with pytest.raises(FileNotFoundError, match="no raymmr export"):
        RaymmrModel.from_pretrained(str(tmp_path))


def test_evaluation_writes_its_numbers_into_the_card(trained, tmp_path):
    from raymmr.eval.evaluate import evaluate
    from raymmr.serve import Predictor

    _, _, data, export = trained
    results = evaluate(str(export), str(data), str(tmp_path / "eval"), split="test", severities=("strong",), card=True)
    card = (export / "README.md").read_text()
    assert "Not evaluated yet" not in card
    assert f"| VQA accuracy, overall | {100 * results['vqa_overall']:.1f}% |" in card
    assert f"| baseline: question only | {100 * results['question_only_baseline']:.1f}% |" in card
    predictor = Predictor.from_pretrained(str(export))
    assert len(predictor.answer([s.image for s in hand_samples("x", 2, size=S)], ["Question 1?", "Question 2?"])) == 2


def test_evaluation_runs_through_the_predictor(trained, tmp_path):
    """One inference path: evaluate's answers are Predictor.answer's on the split's images as a user
    passes them (PIL, resized by the one image helper), its logits the live model's, and its
    perturbed pass is reproducible and really perturbs."""
    from raymmr.data.loader import iter_samples
    from raymmr.data.shards import shard_urls
    from raymmr.eval import metrics as M
    from raymmr.eval.evaluate import answers, evaluate, load_split
    from raymmr.perturb import SeededPerturbation
    from raymmr.serve import Predictor

    model, tok, data, export = trained
    predictor = Predictor.from_pretrained(str(export), batch_size=5)  # batches that do not divide the split
    users = [s for s in iter_samples(shard_urls(str(data), "test")) if s.kind == "vqa"]
    predicted = [a for a, _ in predictor.answer([s.image for s in users], [s.question for s in users])]
    test = load_split(str(data), "test", S)
    assert answers(predictor, test.vqa) == predicted
    results = evaluate(str(export), str(data), str(tmp_path / "eval"), split="test", severities=("strong",),
                       batch_size=5)
    golds, types = [s.answer for s in users], [s.answer_type for s in users]
    assert results["vqa_overall"] == M.vqa_accuracy(predicted, golds, types)["overall"]

    images = torch.from_numpy(np.stack([s.image for s in test.vqa]))
    ids, mask = encode_texts(tok, [s.question for s in test.vqa], model.cfg.max_text_len)
    with torch.no_grad():
        live = model.answer_logits(images, ids, mask)
    logits = predictor.answer_logits([s.image for s in test.vqa], [s.question for s in test.vqa])
    torch.testing.assert_close(logits, live, rtol=0, atol=1e-5)

    shift = SeededPerturbation("strong", ["noise", "cutout"], ["shuffle"], seed=0)
    once = predictor.answer_logits([s.image for s in test.vqa], [s.question for s in test.vqa], perturbation=shift)
    again = predictor.answer_logits([s.image for s in test.vqa], [s.question for s in test.vqa], perturbation=shift)
    torch.testing.assert_close(once, again, rtol=0, atol=0)
    assert (once - logits).abs().max() > 1e-4


def test_the_card_names_the_stage_that_made_the_export(trained, tmp_path):
    from raymmr.model.export import save_export, write_model_card

    model, _, data, export = trained
    assert "Training: not recorded" in (export / "README.md").read_text()  # save_pretrained
    cfg = load_config("tiny", [f"data.image_size={S}", f"model.image_size={S}"])
    answers = read_manifest(data)["answers"]
    for stage, says, never in (("pretrain", f"Pre-training: {cfg.train.steps} steps", "Fine-tuning"),
                               ("finetune", f"Fine-tuning: {cfg.finetune.steps} steps", "Pre-training:")):
        out = save_export(model, cfg, tmp_path / stage, tokenizer=shard_tokenizer(str(data)), answers=answers,
                          stage=stage)
        write_model_card(str(out), "On `test`: 50.0%")  # keeps the stage
        card = (out / "README.md").read_text()
        assert says in card and never not in card and "On `test`: 50.0%" in card, card
