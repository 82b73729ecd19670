"""Evaluate an exported model on a shard set (docs/SPEC.md §5): VQA accuracy (overall / open / closed,
per domain, cross-domain), the same on the fixed robustness benchmark (``raymmr.eval.robustness``:
seen and unseen perturbation families), retrieval R@K and mean rank clean and perturbed with the
degradation, and the text-only baselines beside them on the same questions, each number with a
95% image-level bootstrap interval (``metrics.ImageBootstrap``) and each margin paired.

Writes ``results.json``, ``results.md`` and plots into the output directory. The answer
vocabulary is the model's (exported with it); test answers outside it count as wrong, which is
the *clean* protocol when the vocabulary came from train only (docs/SPEC.md §5).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raymmr.eval import metrics as M
from raymmr.eval.robustness import BENCHMARK_SETS, SEEN_SETS, UNSEEN_SETS, benchmark_perturbation

SEVERITIES = SEEN_SETS  # the seen benchmark sets, named by their raymmr.perturb severity
ROLES = ("selection", "final")  # a validation split that choices are made on; the test split, reported once
# The text-only baselines (docs/SPEC.md §5), in the order a tie between them is broken.
BASELINES = (("majority", "majority answer"), ("question_only", "question only"),
             ("type_prior", "question-type prior"), ("blank_image", "same model fine-tuned on blank images"))
# Question subsets with their own accuracy, interval and baselines: (key suffix, label).
SUBSETS = (("", "overall"), ("_open", "open"), ("_closed", "closed"), ("_in_domain", "training domains"),
           ("_cross_domain", "unseen domain"))
# Result keys of a robustness set: the seen sets keep the names readers already use
# (``vqa_overall_perturbed_strong``); the unseen sets say so (``vqa_overall_unseen_typos``).
_ROBUSTNESS_KEYS = {
    "accuracy": ("vqa_overall_perturbed_{}", "vqa_overall_unseen_{}"),
    "drop": ("vqa_overall_drop_{}", "vqa_overall_drop_unseen_{}"),
    "rank": ("retrieval_mean_rank_perturbed_{}", "retrieval_mean_rank_unseen_{}"),
    "rank_degradation": ("retrieval_mean_rank_degradation_{}", "retrieval_mean_rank_degradation_unseen_{}"),
}


def model_key(suffix: str) -> str:
    """The results key of the model's accuracy on a subset (``SUBSETS``): vqa_overall, vqa_open, ..."""
    return f"vqa{suffix or '_overall'}"


def robustness_key(metric: str, shift: str) -> str:
    """The results key of ``metric`` ("accuracy", "drop", "rank", "rank_degradation") on robustness set ``shift``."""
    seen, unseen = _ROBUSTNESS_KEYS[metric]
    return (seen if BENCHMARK_SETS[shift].family == "seen" else unseen).format(shift)


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


def train_vqa_records(data: str, fields: dict | None = None) -> list[dict]:
    """question, answer, question_type, answer_type of the train split's VQA samples, from the JSON
    records only (no image decoding): what the text-only baselines learn from."""
    from raymmr.data.loader import iter_records
    from raymmr.data.shards import shard_urls

    return [{k: r.get(k, "") for k in ("question", "answer", "question_type", "answer_type")}
            for r in iter_records(shard_urls(data, "train"), fields) if r["kind"] == "vqa"]


def image_ids(samples) -> list[str]:
    """One id per sample naming its image: a hash of its decoded uint8 pixels.

    The bootstrap's unit (questions about one image are not independent). Pixels are the one
    identity every sample has in every shard set: keys follow each source's own scheme (SynthRad's
    ``extra["image_id"]`` exists only there; VQA-RAD and SLAKE reuse one image under many question
    ids), and the same image stored twice is still one cluster. Two different images with equal
    pixels would merge, which only widens an interval."""
    return [hashlib.blake2b(np.ascontiguousarray(s.image).tobytes(), digest_size=12).hexdigest() for s in samples]


def caption_groups(samples) -> list[str]:
    """One label per caption sample, equal for captions retrieval must count as one: the text
    lower-cased with whitespace collapsed, which the tokenizer (lower-casing) cannot tell apart."""
    return [" ".join(s.caption.lower().split()) for s in samples]


def _desc(what: str, shift: str, progress: bool) -> str | None:
    return f"{what}, {'clean' if shift == 'none' else shift}" if progress else None


def answers(predictor, samples, shift: str = "none", progress: bool = False, *, blank: bool = False) -> list[str]:
    """The predicted answer of every VQA sample, its inputs perturbed by the robustness benchmark
    set ``shift`` ("none": clean); ``blank``: every image replaced by the blank image (the
    text-only baseline's input, ``raymmr.data.images.blank_image``)."""
    from raymmr.data.images import blank_image

    images = [s.image for s in samples]
    if blank:
        images = [blank_image(predictor.cfg.data.image_size)] * len(samples)
    return [a for a, _ in predictor.answer(images, [s.question for s in samples],
                                           perturbation=benchmark_perturbation(shift, samples),
                                           desc=_desc("VQA, blank images" if blank else "VQA", shift, progress))]


def embeddings(predictor, samples, shift: str = "none", progress: bool = False,
               clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [N, D], caption [N, D]) embeddings, inputs perturbed by benchmark set ``shift``.
    ``clean``: the clean pair, reused for the modality a set leaves untouched (the same numbers)."""
    desc = _desc("retrieval", shift, progress)
    spec = BENCHMARK_SETS.get(shift)
    shift_p = benchmark_perturbation(shift, samples)
    if clean is not None and spec is not None and not spec.image_ops:
        img = clean[0]
    else:
        img = predictor.embed_images([s.image for s in samples], perturbation=shift_p, desc=desc and f"{desc}, images")
    if clean is not None and spec is not None and not spec.text_ops:
        txt = clean[1]
    else:
        txt = predictor.embed_texts([s.caption for s in samples], perturbation=shift_p, desc=desc and f"{desc}, texts")
    return img, txt


def evaluate(export_dir: str, data: str, out: str, *, split: str, role: str | None = None,
             severities=SEVERITIES, unseen=None, blank_export: str | None = None, retrieval_size: int = 1000,
             batch_size: int = 64, limit: int = 0, progress: bool = False, card: bool = False,
             n_boot: int = 1000) -> dict:
    """Run every evaluation and write results.json / results.md / plots into ``out``. ``export_dir``
    and ``out`` are local paths or storage URLs. ``split`` has no default: which split is read is
    always the caller's decision (choices on ``val``, the final report on ``test``).

    ``role``: "selection" (a validation split, the one choices are made on) or "final" (the test
    split, reported once choices are fixed); default "final" for ``test``, else "selection". Both
    are written into the results, and selecting on ``test`` is refused (docs/SPEC.md §5).
    ``severities``: the *seen* robustness sets (``robustness.SEEN_SETS``); ``unseen``: the *unseen*
    ones (None: all of them whenever a seen set is evaluated, so ``severities=()`` stays clean-only).
    ``blank_export``: the same model fine-tuned on blank images, evaluated on blank images as a
    text-only baseline. ``n_boot``: bootstrap resamples of the intervals. ``card``: also write the
    results into the export's model card (its README.md)."""
    from raymmr import storage
    from raymmr.data.shards import read_manifest, training_domains
    from raymmr.rundir import RunDir
    from raymmr.serve import Predictor

    role = role or ("final" if split == "test" else "selection")
    if role not in ROLES:
        raise ValueError(f"evaluate: role {role!r}; allowed: {', '.join(ROLES)}")
    if role == "selection" and split == "test":
        raise ValueError("evaluate: role 'selection' on the test split; choices are made on validation, never on test")
    severities = tuple(severities)
    unseen = (UNSEEN_SETS if severities else ()) if unseen is None else tuple(unseen)
    bad = [s for s in severities if s not in SEEN_SETS] + [u for u in unseen if u not in UNSEEN_SETS]
    if bad:
        raise ValueError(f"evaluate: unknown robustness sets {bad}; seen: {SEEN_SETS}, unseen: {UNSEEN_SETS}")
    shifts = (*severities, *unseen)

    predictor = Predictor.from_export(storage.cached_copy(export_dir, "exports"), batch_size=batch_size)
    blank_predictor = None if blank_export is None else Predictor.from_export(
        storage.cached_copy(blank_export, "exports"), batch_size=batch_size)
    manifest = read_manifest(data)
    test = load_split(data, split, predictor.cfg.data.image_size, limit, manifest.get("fields"))
    if not test.vqa and not test.captions:
        raise ValueError(f"{data}: split '{split}' has no samples")
    train_domains = training_domains(manifest)
    results: dict = {"split": split, "role": role, "data": data, "model": export_dir, "n_vqa": len(test.vqa),
                     "n_captions": len(test.captions),
                     "robustness_benchmark": {s: {"family": BENCHMARK_SETS[s].family,
                                                  "ops": BENCHMARK_SETS[s].describe()} for s in shifts}}
    if blank_export is not None:
        results["blank_model"] = blank_export
    questions: list[dict] = []
    if test.vqa:
        results.update(vqa_results(predictor, test.vqa, train_vqa_records(data, manifest.get("fields")),
                                   train_domains, shifts, blank_predictor=blank_predictor, n_boot=n_boot,
                                   progress=progress, questions=questions))
    if len(test.captions) >= 2:
        results.update(retrieval_results(predictor, test.captions[:retrieval_size], shifts, n_boot=n_boot,
                                         progress=progress))

    run = RunDir(out)
    write_results(results, str(run.local), questions)
    run.upload()
    if card:
        from raymmr.model.export import write_model_card

        write_model_card(export_dir, f"On `{data}`:\n\n{results_markdown(results)}")
    return results


def subset_masks(samples, train_domains: set) -> dict[str, np.ndarray]:
    """Key suffix (``SUBSETS``) -> bool [Q] mask of the questions in that subset. Open and closed
    are always there (an empty one gives nan, as ``vqa_accuracy`` does); a domain subset only when
    it has questions (a validation split has no unseen domain)."""
    atype = np.array([M.answer_type_name(s.answer_type) for s in samples])
    in_domain = np.array([s.domain in train_domains for s in samples])
    masks = {"": np.ones(len(samples), bool), "_open": atype == "open", "_closed": atype == "closed"}
    for suffix, mask in (("_in_domain", in_domain), ("_cross_domain", ~in_domain)):
        if mask.any():
            masks[suffix] = mask
    return masks


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else M.NAN


def _hits(preds, golds) -> np.ndarray:
    """float [Q] 1 where the answer is right: what the bootstrap resamples and differences pair."""
    return np.array(M.answer_hits(preds, golds), dtype=float)


def vqa_results(predictor, samples, train_records: list[dict], train_domains: set, shifts=(), *,
                blank_predictor=None, n_boot: int = 1000, progress: bool = False,
                questions: list | None = None) -> dict:
    """The VQA part of the results: the model's accuracy per subset, the text-only baselines on the
    same questions, the margin over the strongest of them, per question type and domain, and on
    every robustness set; each with its image-bootstrap interval (``key_ci``), margins and drops
    paired (one set of resampled images for all). ``questions``: a list that receives one row per
    question (``QUESTIONS``: its key, image, subsets, answer, prediction and correctness clean and on
    every set), so that two models evaluated on one split can be compared question by question."""
    golds = [s.answer for s in samples]
    boot = M.ImageBootstrap(image_ids(samples), n_boot=n_boot)
    masks = subset_masks(samples, train_domains)
    preds = answers(predictor, samples, progress=progress)
    hits = _hits(preds, golds)  # [Q]
    out: dict = {"n_images": boot.n_images,
                 "bootstrap": {"unit": "image", "n_boot": n_boot, "seed": boot.seed, "level": boot.level}}

    def put(key: str, values: np.ndarray, mask: np.ndarray) -> None:
        out[key], out[f"{key}_ci"] = _mean(values, mask), list(boot.interval(values, mask))

    for suffix, mask in masks.items():
        put(model_key(suffix), hits, mask)
        if suffix:
            out[f"n_vqa{suffix}"] = int(mask.sum())

    baselines = baseline_predictions(train_records, samples, blank_predictor, progress) if train_records else {}
    base_hits = {name: _hits(p, golds) for name, p in baselines.items()}
    for name, h in base_hits.items():
        for suffix, mask in masks.items():
            put(f"{name}_baseline{suffix}", h, mask)
    for suffix in ("", "_in_domain", "_cross_domain"):
        if suffix in masks and base_hits:
            # The strongest on the very questions the margin is stated on: picking it on these
            # questions favours the baseline, so the margin errs on the modest side.
            name = max(base_hits, key=lambda b: _mean(base_hits[b], masks[suffix]))
            out[f"text_only_baseline{suffix}"] = {"name": name, "accuracy": out[f"{name}_baseline{suffix}"],
                                                  "ci": out[f"{name}_baseline{suffix}_ci"]}
            put(f"margin_over_text_only{suffix}", hits - base_hits[name], masks[suffix])
    if "type_prior" in base_hits and masks["_closed"].any():
        put("closed_margin_over_type_prior", hits - base_hits["type_prior"], masks["_closed"])

    domains = [s.domain for s in samples]
    out["vqa_by_domain"], out["vqa_by_domain_ci"] = {}, {}
    for d in sorted(set(domains)):
        mask = np.array([x == d for x in domains])
        out["vqa_by_domain"][d], out["vqa_by_domain_ci"][d] = _mean(hits, mask), list(boot.interval(hits, mask))
    out["vqa_by_question_type"] = by_question_type(samples, preds, baselines, boot)

    per_set = {"clean": hits}
    for shift in shifts:
        h = per_set[shift] = _hits(answers(predictor, samples, shift, progress), golds)
        put(robustness_key("accuracy", shift), h, masks[""])
        put(robustness_key("drop", shift), hits - h, masks[""])
    if questions is not None:
        ids = boot.image_index
        questions += [{"key": q.key, "image": int(ids[i]), "domain": q.domain, "in_domain": q.domain in train_domains,
                       "question_type": q.question_type, "answer_type": M.answer_type_name(q.answer_type),
                       "answer": q.answer, "prediction": preds[i],
                       "correct": {name: int(h[i]) for name, h in per_set.items()}}
                      for i, q in enumerate(samples)]
    return out


def baseline_predictions(train_records: list[dict], samples, blank_predictor=None, progress: bool = False) -> dict:
    """Baseline name (``BASELINES``) -> one answer per question of ``samples``."""
    golds, types = [s.answer for s in samples], [s.answer_type for s in samples]
    out = {
        "majority": M.majority_baseline([r["answer"] for r in train_records], golds, types)["predictions"],
        "question_only": M.question_only_baseline([(r["question"], r["answer"]) for r in train_records],
                                                  [(s.question, s.answer) for s in samples], types)["predictions"],
        "type_prior": M.type_prior_baseline(train_records, samples, types)["predictions"],
    }
    if blank_predictor is not None:
        out["blank_image"] = answers(blank_predictor, samples, progress=progress, blank=True)
    return out


def retrieval_results(predictor, captions, shifts=(), *, n_boot: int = 1000, progress: bool = False) -> dict:
    """Retrieval R@K and mean rank among ``captions`` (identical captions count as one, see
    ``metrics.retrieval_ranks``), clean and on every robustness set, with the degradation.

    Mean ranks get image-bootstrap intervals of the items' ranks (each item's rank averaged over
    both directions), the pool held fixed: they say which items happened to be drawn, not how the
    rank would move with another pool of captions."""
    groups = caption_groups(captions)
    boot = M.ImageBootstrap(image_ids(captions), n_boot=n_boot)

    def item_ranks(img, txt) -> np.ndarray:  # [N], mean = retrieval_metrics' mean_rank
        i2t, t2i = M.retrieval_ranks(img @ txt.T, groups)
        return ((i2t + t2i) / 2).double().numpy()

    clean = embeddings(predictor, captions, progress=progress)
    r = M.retrieval_metrics(clean[0] @ clean[1].T, text_groups=groups)
    clean_ranks = item_ranks(*clean)
    out = {f"retrieval_{k}": v for k, v in r.items() if k != "n"}
    out.update(retrieval_n=r["n"], retrieval_distinct_captions=len(set(groups)),
               retrieval_chance_mean_rank=M.chance_mean_rank(groups),
               retrieval_mean_rank_ci=list(boot.interval(clean_ranks)))
    for shift in shifts:
        ranks = item_ranks(*embeddings(predictor, captions, shift, progress, clean=clean))
        rank, degradation = robustness_key("rank", shift), robustness_key("rank_degradation", shift)
        out[rank], out[f"{rank}_ci"] = float(ranks.mean()), list(boot.interval(ranks))
        out[degradation] = out[rank] - r["mean_rank"]
        out[f"{degradation}_ci"] = list(boot.interval(ranks - clean_ranks))
    return out


def by_question_type(samples, preds: list[str], baselines: dict[str, list[str]], bootstrap=None) -> dict:
    """Accuracy per "question_type/answer_type" (e.g. "presence/closed"; samples without a question
    type are left out), with each baseline's accuracy on the same questions beside it (``baselines``:
    name -> one answer per sample): which kinds of question the model answers from the image rather
    than from the question's wording. ``bootstrap``: an ``ImageBootstrap`` of ``samples``, for
    ``accuracy_ci``."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.question_type:
            groups.setdefault(f"{s.question_type}/{s.answer_type or 'open'}", []).append(i)
    hits = _hits(preds, [s.answer for s in samples])
    out = {}
    for name, idx in sorted(groups.items()):
        golds = [samples[i].answer for i in idx]
        row = {"n": len(idx), "accuracy": float(hits[idx].mean())}
        if bootstrap is not None:
            mask = np.zeros(len(samples), bool)
            mask[idx] = True
            row["accuracy_ci"] = list(bootstrap.interval(hits, mask))
        for base, base_preds in baselines.items():
            row[base] = M.vqa_accuracy([base_preds[i] for i in idx], golds)["overall"]
        out[name] = row
    return out


QUESTIONS = "questions.jsonl"  # beside results.json: one row per VQA question (``vqa_results``)


def read_questions(eval_dir: str) -> dict[str, dict] | None:
    """The questions of an evaluation written to ``eval_dir`` (a path or URL), by key (``QUESTIONS``);
    None when it wrote none."""
    from raymmr import storage

    path = storage.join(eval_dir, QUESTIONS)
    if not storage.exists(path):
        return None
    return {q["key"]: q for q in map(json.loads, storage.read_text(path).splitlines())}


def write_results(results: dict, out: str, questions: list[dict] | None = None) -> None:
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    (outp / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    if questions:
        (outp / QUESTIONS).write_text("".join(json.dumps(q) + "\n" for q in questions))
    (outp / "results.md").write_text(results_markdown(results))
    plot_results(results, outp)


_ROLE_NOTES = {"final": "the final evaluation, made once the choices were fixed",
               "selection": "the split choices are made on, so not a final result"}


def results_markdown(r: dict) -> str:
    """results.md: every headline number with its 95% interval, the margin over the text-only
    baseline named and paired, the baselines per subset, the robustness benchmark and the breakdowns."""
    def pct(key):
        return M.format_value(r.get(key), percent=True)

    def interval(key):
        return M.format_ci(r.get(f"{key}_ci"))

    def with_ci(key, signed=False):  # "53.1% [51.0, 55.2]"
        return M.format_interval(r.get(key), r.get(f"{key}_ci"), signed=signed)

    def verdict(key):  # a paired difference whose interval holds 0 is no evidence of an effect
        return "" if M.effect_shown(r.get(f"{key}_ci")) else ": no effect shown"

    role = r.get("role", "")
    note = _ROLE_NOTES.get(role, "role not recorded")
    lines = [f"Evaluation on `{r['split']}`, role **{role or 'unstated'}** ({note}): {r['n_vqa']} VQA questions "
             f"about {r.get('n_images', '?')} images, {r['n_captions']} captions."]
    if "bootstrap" in r:
        lines.append(f"Intervals: 95%, bootstrap over images ({r['bootstrap']['n_boot']} resamples; the questions "
                     "about one image are resampled together); differences are paired.")
    lines += ["", "| metric | value | 95% interval |", "|---|---|---|"]
    rows = [("vqa_overall", "VQA accuracy, overall"), ("vqa_open", "VQA accuracy, open"),
            ("vqa_closed", "VQA accuracy, closed"),
            *[(f"{name}_baseline", f"baseline: {label}") for name, label in BASELINES],
            ("vqa_in_domain", "VQA accuracy, training domains"),
            ("vqa_cross_domain", "VQA accuracy, unseen domain (cross-domain)")]
    lines += [f"| {label} | {pct(key)} | {interval(key)} |" for key, label in rows if key in r]
    if "retrieval_mean_rank" in r:
        n = r["retrieval_n"]
        chance = r.get("retrieval_chance_mean_rank", (n + 1) / 2)
        lines.append(f"| retrieval R@1 / R@5 / R@10, image→text (N={n}, {r.get('retrieval_distinct_captions', n)} "
                     f"distinct captions) | {pct('retrieval_i2t_r1')} / {pct('retrieval_i2t_r5')} / "
                     f"{pct('retrieval_i2t_r10')} | |")
        lines.append(f"| retrieval R@1 / R@5 / R@10, text→image | {pct('retrieval_t2i_r1')} / "
                     f"{pct('retrieval_t2i_r5')} / {pct('retrieval_t2i_r10')} | |")
        lines.append(f"| retrieval mean rank (chance {chance:.1f}) | {r['retrieval_mean_rank']:.2f} | "
                     f"{_rank_ci(r.get('retrieval_mean_rank_ci'))} |")
    if "retrieval_distinct_captions" in r:
        lines += ["", "Retrieval counts any caption identical to the true one (after lower-casing) as a hit."]

    labels = dict(BASELINES)
    margins = []
    for suffix, label in (("", "all questions"), ("_in_domain", "training domains"),
                          ("_cross_domain", "unseen domain")):
        base = r.get(f"text_only_baseline{suffix}")
        if base:
            key = f"margin_over_text_only{suffix}"
            margins.append(f"- {label}: {with_ci(key, True)} over the text-only baseline ({labels[base['name']]}, "
                           f"{M.format_interval(base['accuracy'], base['ci'])}){verdict(key)}")
    if "closed_margin_over_type_prior" in r:
        margins.append(f"- closed questions: {with_ci('closed_margin_over_type_prior', True)} over the question-type "
                       f"prior ({with_ci('type_prior_baseline_closed')}){verdict('closed_margin_over_type_prior')}")
    if margins:
        lines += ["", "Margin of the model over the text-only baseline (the strongest baseline on the same questions; "
                  "paired, in accuracy points):", "", *margins]

    subsets = [(s, label) for s, label in SUBSETS if model_key(s) in r]
    predictors = [("model", model_key)] + [(label, lambda s, n=n: f"{n}_baseline{s}")
                                           for n, label in BASELINES if f"{n}_baseline" in r]
    if len(predictors) > 1:
        lines += ["", "| on the same questions | " + " | ".join(label for _, label in subsets) + " |",
                  "|---" * (len(subsets) + 1) + "|"]
        for label, key in predictors:
            cells = [with_ci(key(s)) for s, _ in subsets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    sets = r.get("robustness_benchmark") or {}
    if sets:
        lines += ["", "Robustness benchmark (fixed by `raymmr.eval.robustness`, whatever the model was trained with): "
                  "*seen* sets use raymmr's training perturbation families, *unseen* sets families training never "
                  "uses. Drops are paired against clean inputs.", "",
                  "| set | family | perturbations | VQA accuracy | drop | retrieval mean rank (degradation) |",
                  "|---|---|---|---|---|---|",
                  f"| clean | | | {with_ci('vqa_overall')} | | "
                  f"{_rank(r, 'retrieval_mean_rank')} |"]
        for family in ("seen", "unseen"):
            for name, spec in sets.items():
                if spec["family"] != family:
                    continue
                acc, drop = robustness_key("accuracy", name), robustness_key("drop", name)
                rank, deg = robustness_key("rank", name), robustness_key("rank_degradation", name)
                lines.append(f"| {name} | {family} | {spec['ops']} | {with_ci(acc)} | {with_ci(drop, True)}"
                             f"{verdict(drop)} | {_rank(r, rank, deg)} |")

    if r.get("vqa_by_question_type"):
        present = [(n, label) for n, label in BASELINES if any(n in v for v in r["vqa_by_question_type"].values())]
        lines += ["", "| question type | n | VQA accuracy | " + " | ".join(label for _, label in present) + " |",
                  "|---" * (3 + len(present)) + "|"]
        for t, v in r["vqa_by_question_type"].items():
            cells = [M.format_value(v.get(n), percent=True) for n, _ in present]
            lines.append(f"| {t} | {v['n']} | {M.format_interval(v['accuracy'], v.get('accuracy_ci'))} | "
                         + " | ".join(cells) + " |")
    if r.get("vqa_by_domain"):
        cis = r.get("vqa_by_domain_ci", {})
        lines += ["", "| domain | VQA accuracy |", "|---|---|"]
        lines += [f"| {d} | {M.format_interval(v, cis.get(d))} |" for d, v in r["vqa_by_domain"].items()]
    return "\n".join(lines) + "\n"


def _rank_ci(ci) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci and all(c == c for c in ci) else ""


def _rank(r: dict, key: str, degradation_key: str | None = None) -> str:
    """A mean rank with its interval, and its change from clean with the paired one: "130.2 [121.0, 139.9]
    (+12.5 [8.1, 17.0])"."""
    def with_ci(k, fmt):
        return f"{format(r[k], fmt)} {_rank_ci(r.get(f'{k}_ci'))}".rstrip()

    if key not in r:
        return ""
    return with_ci(key, ".2f") + (f" ({with_ci(degradation_key, '+.2f')})" if degradation_key in r else "")


def plot_results(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "vqa_overall" in r:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        sets = r.get("robustness_benchmark") or {}
        for family, fmt in (("seen", "o-"), ("unseen", "s")):  # a line through severities only
            names = [s for s in sets if sets[s]["family"] == family]
            xs = (["clean"] if family == "seen" else []) + names
            keys = (["vqa_overall"] if family == "seen" else []) + [robustness_key("accuracy", s) for s in names]
            ys = [r.get(k, float("nan")) for k in keys]
            cis = [r.get(f"{k}_ci") for k in keys]
            err = np.array([[y - c[0], c[1] - y] if c and y == y else [0.0, 0.0] for y, c in zip(ys, cis)]).T
            if xs:
                ax.errorbar(xs, ys, yerr=err.reshape(2, -1), fmt=fmt, capsize=3, label=f"model, {family}")
        for (name, label), ls in zip(BASELINES, ("--", ":", "-.", (0, (1, 3)))):
            if f"{name}_baseline" in r:
                ax.axhline(r[f"{name}_baseline"], color="gray", ls=ls, label=label)
        ax.set(xlabel="robustness set (seen severities, then unseen families)", ylabel="VQA accuracy", ylim=(0, 1),
               title="Accuracy on the robustness benchmark (95% intervals)")
        ax.legend(fontsize="small")
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
