"""Evaluate an exported model on a shard set (SPEC §5): VQA accuracy (overall / open / closed,
per domain, cross-domain), the same under perturbation at named severities, retrieval R@K and
mean rank clean and perturbed with the degradation, and the text-only baselines beside them.

Writes ``results.json``, ``results.md`` and plots into the output directory. The answer
vocabulary is the model's (exported with it); test answers outside it count as wrong, which is
the *clean* protocol when the vocabulary came from train only (SPEC §5).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raymmr.eval import metrics as M

SEVERITIES = ("light", "medium", "strong")


@dataclass
class EvalSet:
    """Decoded samples of one split: VQA rows and caption rows, images as uint8 [3,S,S] arrays."""

    vqa: list  # list[Sample]
    captions: list  # list[Sample]


def load_split(data: str, split: str, image_size: int, limit: int = 0) -> EvalSet:
    from raymmr.data.loader import iter_samples  # noqa: PLC0415
    from raymmr.data.shards import shard_urls  # noqa: PLC0415

    vqa, captions = [], []
    for sample in iter_samples(shard_urls(data, split)):
        sample.image = to_uint8(sample.image, image_size)
        (captions if sample.kind == "caption" else vqa).append(sample)
        if limit and len(vqa) + len(captions) >= limit:
            break
    return EvalSet(vqa=vqa, captions=captions)


def train_text_pairs(data: str) -> list[tuple[str, str]]:
    """(question, answer) of the train split, from the JSON records only (no image decoding)."""
    from raymmr.data.loader import iter_records  # noqa: PLC0415
    from raymmr.data.shards import shard_urls  # noqa: PLC0415

    return [(r["question"], r["answer"]) for r in iter_records(shard_urls(data, "train")) if r["kind"] == "vqa"]


def to_uint8(image, size: int) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()  # [3,S,S]


class Evaluator:
    """Batched inference with an exported model, optionally under a perturbation severity."""

    def __init__(self, export_dir: str, *, batch_size: int = 64, device: str | None = None, seed: int = 0,
                 progress: bool = False):
        from raymmr.data.tokenizer import encode_texts, load_tokenizer  # noqa: PLC0415
        from raymmr.model.export import load_export  # noqa: PLC0415

        self.model, self.cfg, _ = load_export(export_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.tokenizer = load_tokenizer(str(export_dir))  # its own tokenizer.json, or a pretrained one it saved
        self.encode_texts = encode_texts
        self.answers = json.loads((Path(export_dir) / "answers.json").read_text())
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress  # a progress bar per pass over the samples (stderr)

    def _chunks(self, samples, what: str):
        from tqdm.auto import tqdm  # noqa: PLC0415

        starts = range(0, len(samples), self.batch_size)
        for i in tqdm(starts, desc=what, unit="batch", disable=not self.progress, leave=False):
            yield i, samples[i : i + self.batch_size]

    def _inputs(self, samples, texts, severity: str, offset: int):
        from raymmr.perturb import perturb_images, perturb_text  # noqa: PLC0415

        images = torch.from_numpy(np.stack([s.image for s in samples])).to(self.device)
        if severity != "none":
            p = self.cfg.perturbation
            g = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + offset)
            images = perturb_images(images.float() / 255.0, severity, p.image_ops, g)
            images = (images * 255.0).round().clamp(0, 255).to(torch.uint8)
            rng = random.Random(self.seed * 104729 + offset)
            texts = [perturb_text(t, severity, p.text_ops, rng) for t in texts]
        ids, mask = self.encode_texts(self.tokenizer, texts, self.cfg.model.max_text_len)
        return images, ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def answer(self, samples, severity: str = "none") -> list[str]:
        preds = []
        for i, chunk in self._chunks(samples, f"VQA, {severity if severity != 'none' else 'clean'}"):
            images, ids, mask = self._inputs(chunk, [s.question for s in chunk], severity, i)
            logits = self.model.answer_logits(images, ids, mask)
            preds += [self.answers[j] for j in logits.argmax(-1).tolist()]
        return preds

    @torch.no_grad()
    def similarity(self, samples, severity: str = "none") -> torch.Tensor:
        img, txt = [], []
        for i, chunk in self._chunks(samples, f"retrieval, {severity if severity != 'none' else 'clean'}"):
            images, ids, mask = self._inputs(chunk, [s.caption for s in chunk], severity, i)
            img.append(self.model.encode_image(images).float())
            txt.append(self.model.encode_text(ids, mask).float())
        return torch.cat(img) @ torch.cat(txt).T  # [N, N], pair i <-> i


def evaluate(export_dir: str, data: str, out: str, *, split: str = "test", severities=SEVERITIES,
             retrieval_size: int = 1000, batch_size: int = 64, limit: int = 0, progress: bool = False,
             card: bool = False) -> dict:
    """Run every evaluation and write results.json / results.md / plots into ``out``. ``export_dir``
    and ``out`` are local paths or storage URLs. ``card``: also write the results into the
    export's model card (its README.md)."""
    from raymmr import storage  # noqa: PLC0415
    from raymmr.data.shards import read_manifest  # noqa: PLC0415
    from raymmr.train.rundir import RunDir  # noqa: PLC0415

    ev = Evaluator(str(storage.cached_copy(export_dir, "exports")), batch_size=batch_size, progress=progress)
    test = load_split(data, split, ev.cfg.model.image_size, limit)
    if not test.vqa and not test.captions:
        raise ValueError(f"{data}: split '{split}' has no samples")
    manifest = read_manifest(data)
    train_domains = set(manifest["splits"]["train"].get("domains", []))
    results: dict = {"split": split, "data": data, "model": export_dir, "n_vqa": len(test.vqa),
                     "n_captions": len(test.captions)}

    if test.vqa:
        golds = [s.answer for s in test.vqa]
        types = [s.answer_type for s in test.vqa]
        domains = [s.domain for s in test.vqa]
        preds = {sev: ev.answer(test.vqa, sev) for sev in ("none", *severities)}
        clean = M.vqa_accuracy(preds["none"], golds, types)
        results.update(vqa_overall=clean["overall"], vqa_open=clean["open"], vqa_closed=clean["closed"])
        pairs = train_text_pairs(data)
        results["majority_baseline"] = M.majority_baseline([a for _, a in pairs], golds, types)["overall"]
        results["question_only_baseline"] = M.question_only_baseline(
            pairs, [(s.question, s.answer) for s in test.vqa], types)["overall"]
        results["vqa_by_domain"] = {d: r["overall"] for d, r in M.accuracy_by_group(preds["none"], golds, domains, types).items()}
        results["vqa_by_question_type"] = by_question_type(test.vqa, preds["none"], pairs)
        in_dom = [i for i, d in enumerate(domains) if d in train_domains]
        cross = [i for i, d in enumerate(domains) if d not in train_domains]
        for name, idx in (("vqa_in_domain", in_dom), ("vqa_cross_domain", cross)):
            if idx:
                results[name] = M.vqa_accuracy([preds["none"][i] for i in idx], [golds[i] for i in idx])["overall"]
        for sev in severities:
            acc = M.vqa_accuracy(preds[sev], golds, types)
            results[f"vqa_overall_perturbed_{sev}"] = acc["overall"]
            results[f"vqa_overall_drop_{sev}"] = clean["overall"] - acc["overall"]

    if len(test.captions) >= 2:
        caps = test.captions[:retrieval_size]
        clean_r = M.retrieval_metrics(ev.similarity(caps))
        results.update({f"retrieval_{k}": v for k, v in clean_r.items() if k != "n"})
        results["retrieval_n"] = clean_r["n"]
        for sev in severities:
            r = M.retrieval_metrics(ev.similarity(caps, sev))
            results[f"retrieval_mean_rank_perturbed_{sev}"] = r["mean_rank"]
            results[f"retrieval_mean_rank_degradation_{sev}"] = r["mean_rank"] - clean_r["mean_rank"]

    run = RunDir(out)
    write_results(results, str(run.local), severities)
    run.upload()
    if card:
        from raymmr.model.export import write_model_card  # noqa: PLC0415

        write_model_card(export_dir, results)
    return results


def by_question_type(samples, preds: list[str], train_pairs) -> dict:
    """Accuracy per "question_type/answer_type" (e.g. "presence/closed"; samples without a question
    type are left out), with the question-only baseline of the same questions beside it: which kinds
    of question the model answers from the image rather than from the question's wording."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.question_type:
            groups.setdefault(f"{s.question_type}/{s.answer_type or 'open'}", []).append(i)
    out = {}
    for name, idx in sorted(groups.items()):
        golds = [samples[i].answer for i in idx]
        out[name] = {
            "n": len(idx),
            "accuracy": M.vqa_accuracy([preds[i] for i in idx], golds)["overall"],
            "question_only": M.question_only_baseline(train_pairs, [(samples[i].question, g) for i, g in zip(idx, golds)])["overall"],
        }  # fmt: skip
    return out


def write_results(results: dict, out: str, severities=SEVERITIES) -> None:
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    (outp / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    (outp / "results.md").write_text(results_markdown(results, severities))
    plot_results(results, outp, severities)


def results_markdown(r: dict, severities=SEVERITIES) -> str:
    def pct(key):
        v = r.get(key)
        return "—" if v is None or v != v else f"{100 * v:.1f}%"

    lines = [f"Evaluation on `{r['split']}` ({r['n_vqa']} VQA questions, {r['n_captions']} captions)", "",
             "| metric | value |", "|---|---|"]
    for key, label in [("vqa_overall", "VQA accuracy, overall"), ("vqa_open", "VQA accuracy, open"),
                       ("vqa_closed", "VQA accuracy, closed"), ("majority_baseline", "baseline: majority answer"),
                       ("question_only_baseline", "baseline: question only"),
                       ("vqa_in_domain", "VQA accuracy, training domains"),
                       ("vqa_cross_domain", "VQA accuracy, unseen domain (cross-domain)")]:
        if key in r:
            lines.append(f"| {label} | {pct(key)} |")
    for sev in severities:
        if f"vqa_overall_perturbed_{sev}" in r:
            lines.append(f"| VQA accuracy, perturbed ({sev}) | {pct(f'vqa_overall_perturbed_{sev}')} |")
    if "retrieval_mean_rank" in r:
        n = r["retrieval_n"]
        lines.append(f"| retrieval R@1 / R@5 / R@10, image→text (N={n}) | {pct('retrieval_i2t_r1')} / "
                     f"{pct('retrieval_i2t_r5')} / {pct('retrieval_i2t_r10')} |")
        lines.append(f"| retrieval R@1 / R@5 / R@10, text→image | {pct('retrieval_t2i_r1')} / "
                     f"{pct('retrieval_t2i_r5')} / {pct('retrieval_t2i_r10')} |")
        lines.append(f"| retrieval mean rank (chance {(n + 1) / 2:.1f}) | {r['retrieval_mean_rank']:.2f} |")
        for sev in severities:
            key = f"retrieval_mean_rank_perturbed_{sev}"
            if key in r:
                lines.append(f"| retrieval mean rank, perturbed ({sev}) | {r[key]:.2f} "
                             f"(+{r[f'retrieval_mean_rank_degradation_{sev}']:.2f}) |")
    if r.get("vqa_by_question_type"):
        lines += ["", "| question type | n | VQA accuracy | question only |", "|---|---|---|---|"]
        lines += [f"| {t} | {v['n']} | {100 * v['accuracy']:.1f}% | {100 * v['question_only']:.1f}% |"
                  for t, v in r["vqa_by_question_type"].items()]
    if r.get("vqa_by_domain"):
        lines += ["", "| domain | VQA accuracy |", "|---|---|"]
        lines += [f"| {d} | {100 * v:.1f}% |" for d, v in r["vqa_by_domain"].items()]
    return "\n".join(lines) + "\n"


def plot_results(r: dict, out: Path, severities=SEVERITIES) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if "vqa_overall" in r:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = ["none", *severities]
        ys = [r["vqa_overall"]] + [r.get(f"vqa_overall_perturbed_{s}", float("nan")) for s in severities]
        ax.plot(xs, ys, marker="o", label="model")
        ax.axhline(r["majority_baseline"], color="gray", ls="--", label="majority answer")
        ax.axhline(r["question_only_baseline"], color="gray", ls=":", label="question only")
        ax.set(xlabel="perturbation severity", ylabel="VQA accuracy", ylim=(0, 1), title="Accuracy under perturbation")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_severity.png", dpi=110)
        plt.close(fig)
    if r.get("vqa_by_domain"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        names = list(r["vqa_by_domain"])
        ax.bar(names, [r["vqa_by_domain"][n] for n in names])
        ax.set(ylabel="VQA accuracy", ylim=(0, 1), title="Accuracy per domain")
        fig.tight_layout()
        fig.savefig(out / "accuracy_by_domain.png", dpi=110)
        plt.close(fig)
