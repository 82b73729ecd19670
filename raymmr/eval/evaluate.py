"""Evaluate an exported model on a shard set (SPEC §5): VQA accuracy (overall / open / closed,
per domain, cross-domain), the same under perturbation at named severities, retrieval R@K and
mean rank clean and perturbed with the degradation, and the text-only baselines beside them.

Writes ``results.json``, ``results.md`` and plots into the output directory. The answer
vocabulary is the model's (exported with it); test answers outside it count as wrong, which is
the *clean* protocol when the vocabulary came from train only (SPEC §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from raymmr.eval import metrics as M

SEVERITIES = ("light", "medium", "strong")


@dataclass
class EvalSet:
    """Decoded samples of one split: VQA rows and caption rows, images as uint8 [3,S,S] arrays."""

    vqa: list  # list[Sample]
    captions: list  # list[Sample]


def load_split(data: str, split: str, image_size: int, limit: int = 0, fields: dict | None = None) -> EvalSet:
    """``fields``: the manifest's ``fields`` (``shards.record_fields``), for a foreign shard set."""
    from raymmr.data.images import image_array
    from raymmr.data.loader import iter_samples
    from raymmr.data.shards import shard_urls

    vqa, captions = [], []
    for sample in iter_samples(shard_urls(data, split), fields):
        sample.image = image_array(sample.image, image_size)
        (captions if sample.kind == "caption" else vqa).append(sample)
        if limit and len(vqa) + len(captions) >= limit:
            break
    return EvalSet(vqa=vqa, captions=captions)


def train_text_pairs(data: str, fields: dict | None = None) -> list[tuple[str, str]]:
    """(question, answer) of the train split, from the JSON records only (no image decoding)."""
    from raymmr.data.loader import iter_records
    from raymmr.data.shards import shard_urls

    return [(r["question"], r["answer"]) for r in iter_records(shard_urls(data, "train"), fields)
            if r["kind"] == "vqa"]


def perturbation(predictor, severity: str, seed: int = 0):
    """The model config's perturbation ops at ``severity``; None for clean inputs."""
    from raymmr.perturb import SeededPerturbation

    if severity == "none":
        return None
    p = predictor.cfg.perturbation
    return SeededPerturbation(severity, p.image_ops, p.text_ops, seed)


def answers(predictor, samples, severity: str = "none", progress: bool = False) -> list[str]:
    """The predicted answer of every VQA sample, its inputs perturbed at ``severity``."""
    desc = f"VQA, {'clean' if severity == 'none' else severity}" if progress else None
    return [a for a, _ in predictor.answer([s.image for s in samples], [s.question for s in samples],
                                           perturbation=perturbation(predictor, severity), desc=desc)]


def similarity(predictor, samples, severity: str = "none", progress: bool = False) -> torch.Tensor:
    """Image-caption cosine similarities [N, N] (pair i <-> i), inputs perturbed at ``severity``."""
    desc = f"retrieval, {'clean' if severity == 'none' else severity}" if progress else None
    shift = perturbation(predictor, severity)
    img = predictor.embed_images([s.image for s in samples], perturbation=shift, desc=desc and f"{desc}, images")
    txt = predictor.embed_texts([s.caption for s in samples], perturbation=shift, desc=desc and f"{desc}, texts")
    return img @ txt.T


def evaluate(export_dir: str, data: str, out: str, *, split: str = "test", severities=SEVERITIES,
             retrieval_size: int = 1000, batch_size: int = 64, limit: int = 0, progress: bool = False,
             card: bool = False) -> dict:
    """Run every evaluation and write results.json / results.md / plots into ``out``. ``export_dir``
    and ``out`` are local paths or storage URLs. ``card``: also write the results into the
    export's model card (its README.md)."""
    from raymmr import storage
    from raymmr.data.shards import read_manifest
    from raymmr.rundir import RunDir
    from raymmr.serve import Predictor

    predictor = Predictor.from_export(storage.cached_copy(export_dir, "exports"), batch_size=batch_size)
    manifest = read_manifest(data)
    test = load_split(data, split, predictor.cfg.data.image_size, limit, manifest.get("fields"))
    if not test.vqa and not test.captions:
        raise ValueError(f"{data}: split '{split}' has no samples")
    train_domains = set(manifest["splits"]["train"].get("domains", []))
    results: dict = {"split": split, "data": data, "model": export_dir, "n_vqa": len(test.vqa),
                     "n_captions": len(test.captions)}

    if test.vqa:
        golds = [s.answer for s in test.vqa]
        types = [s.answer_type for s in test.vqa]
        domains = [s.domain for s in test.vqa]
        preds = {sev: answers(predictor, test.vqa, sev, progress) for sev in ("none", *severities)}
        clean = M.vqa_accuracy(preds["none"], golds, types)
        results.update(vqa_overall=clean["overall"], vqa_open=clean["open"], vqa_closed=clean["closed"])
        pairs = train_text_pairs(data, manifest.get("fields"))
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
        clean_r = M.retrieval_metrics(similarity(predictor, caps, progress=progress))
        results.update({f"retrieval_{k}": v for k, v in clean_r.items() if k != "n"})
        results["retrieval_n"] = clean_r["n"]
        for sev in severities:
            r = M.retrieval_metrics(similarity(predictor, caps, sev, progress))
            results[f"retrieval_mean_rank_perturbed_{sev}"] = r["mean_rank"]
            results[f"retrieval_mean_rank_degradation_{sev}"] = r["mean_rank"] - clean_r["mean_rank"]

    run = RunDir(out)
    write_results(results, str(run.local), severities)
    run.upload()
    if card:
        from raymmr.model.export import write_model_card

        write_model_card(export_dir, f"On `{data}`:\n\n{results_markdown(results, severities)}")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
