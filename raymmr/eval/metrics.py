"""Evaluation metrics as pure functions: VQA accuracy, retrieval R@K / mean rank, text-only
baselines, image-level bootstrap intervals, robustness degradation, and a Markdown table renderer
for results dicts.

Conventions shared by every function here:

- accuracies and recalls are fractions in [0, 1] (render them as % with ``markdown_table(percent=True)``);
- a metric over an empty set is ``nan`` (not 0), so "no closed questions" cannot pass for 0 % accuracy;
- answers are compared by exact match after :func:`raymmr.data.answers.normalize_answer`
  (VQA-v2 normalisation: lower-case, strip, punctuation, number words, articles);
- answer types may be given as strings ("open", "OPEN", "closed", "CLOSED ", ...) or as the loader's
  ints (0 open, 1 closed, -1 unknown); unknown types count towards ``overall`` only;
- intervals are 95% percentile intervals of an image-level (cluster) bootstrap, :class:`ImageBootstrap`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raymmr.data.answers import normalize_answer

NAN = float("nan")
RECALL_KS = (1, 5, 10)


# --------------------------------------------------------------------------- VQA accuracy


def answer_type_name(t: Any) -> str:
    """'open', 'closed' or 'unknown' for a string or loader-int answer type."""
    if t is None:
        return "unknown"
    if isinstance(t, bool):
        raise TypeError(f"answer type must be a string or 0/1/-1, got {t!r}")
    if isinstance(t, int) or (hasattr(t, "item") and not isinstance(t, str)):
        return {0: "open", 1: "closed"}.get(int(t), "unknown")
    name = str(t).strip().lower()
    return name if name in ("open", "closed") else "unknown"


def _rate(correct: int, n: int) -> float:
    return correct / n if n else NAN


def answer_hits(preds: Sequence[str | int], golds: Sequence[str | int]) -> list[bool]:
    """Per question: is the prediction the gold answer after normalisation. The one definition of a
    correct answer: :func:`vqa_accuracy` counts these, and the bootstrap resamples them."""
    if len(preds) != len(golds):
        raise ValueError(f"vqa_accuracy: {len(preds)} predictions for {len(golds)} gold answers")
    return [normalize_answer(p) == normalize_answer(g) for p, g in zip(preds, golds)]


def vqa_accuracy(
    preds: Sequence[str | int], golds: Sequence[str | int], answer_types: Sequence[Any] | None = None
) -> dict:
    """Exact-match VQA accuracy after answer normalisation.

    Returns ``{"overall", "open", "closed", "n", "n_open", "n_closed", "correct", "correct_open",
    "correct_closed"}``; ``open``/``closed`` are ``nan`` when that type has no questions (or no
    ``answer_types`` are given)."""
    hits = answer_hits(preds, golds)
    if answer_types is not None and len(answer_types) != len(golds):
        raise ValueError(f"vqa_accuracy: {len(answer_types)} answer types for {len(golds)} gold answers")
    types = [answer_type_name(t) for t in answer_types] if answer_types is not None else ["unknown"] * len(golds)
    n = Counter()
    correct = Counter()
    for hit, t in zip(hits, types):
        for key in ("overall", t):
            n[key] += 1
            correct[key] += hit
    return {
        "overall": _rate(correct["overall"], n["overall"]),
        "open": _rate(correct["open"], n["open"]),
        "closed": _rate(correct["closed"], n["closed"]),
        "n": n["overall"],
        "n_open": n["open"],
        "n_closed": n["closed"],
        "correct": correct["overall"],
        "correct_open": correct["open"],
        "correct_closed": correct["closed"],
    }


def accuracy_by_group(
    preds: Sequence[str | int],
    golds: Sequence[str | int],
    groups: Sequence[Hashable],
    answer_types: Sequence[Any] | None = None,
) -> dict[Hashable, dict]:
    """:func:`vqa_accuracy` per group (domain, organ, question type, ...), groups in sorted order."""
    if not len(preds) == len(golds) == len(groups):
        raise ValueError(
            f"accuracy_by_group: lengths differ: {len(preds)} preds, {len(golds)} golds, {len(groups)} groups"
        )
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    out = {}
    for g in sorted(rows, key=lambda x: (str(type(x)), str(x))):
        idx = rows[g]
        types = [answer_types[i] for i in idx] if answer_types is not None else None
        out[g] = vqa_accuracy([preds[i] for i in idx], [golds[i] for i in idx], types)
    return out


# --------------------------------------------------------------------------- text-only baselines


def majority_answer(answers: Iterable[str | int]) -> str:
    """The most frequent normalised answer; ties go to the alphabetically first (deterministic)."""
    counts = Counter(normalize_answer(a) for a in answers)
    if not counts:
        raise ValueError("majority_answer: no answers")
    return min(counts, key=lambda a: (-counts[a], a))


def majority_baseline(
    train_answers: Sequence[str | int],
    test_answers: Sequence[str | int],
    test_answer_types: Sequence[Any] | None = None,
) -> dict:
    """Accuracy of always answering the most frequent train answer; adds ``"prediction"`` and
    ``"predictions"`` (one per test question, for per-question hits)."""
    guess = majority_answer(train_answers)
    preds = [guess] * len(test_answers)
    out = vqa_accuracy(preds, test_answers, test_answer_types)
    out["prediction"] = guess
    out["predictions"] = preds
    return out


def question_only_baseline(
    train_pairs: Sequence[tuple[str, str | int]],
    test_pairs: Sequence[tuple[str, str | int]],
    test_answer_types: Sequence[Any] | None = None,
) -> dict:
    """A text-only "blind" model: answer each test question with the majority train answer of the
    same normalised question, falling back to the global train majority for unseen questions.

    Pairs are ``(question, answer)``. Adds ``"coverage"``: the share of test questions seen in train,
    and ``"predictions"``: one answer per test question."""
    if not train_pairs:
        raise ValueError("question_only_baseline: no train pairs")
    by_question: dict[str, list] = defaultdict(list)
    for q, a in train_pairs:
        by_question[normalize_answer(q)].append(a)
    table = {q: majority_answer(answers) for q, answers in by_question.items()}
    fallback = majority_answer(a for _, a in train_pairs)
    keys = [normalize_answer(q) for q, _ in test_pairs]
    preds = [table.get(k, fallback) for k in keys]
    out = vqa_accuracy(preds, [a for _, a in test_pairs], test_answer_types)
    out["coverage"] = _rate(sum(k in table for k in keys), len(keys))
    out["predictions"] = preds
    return out


def _field(record: Any, name: str) -> Any:
    """``record[name]`` for a JSON record, ``record.name`` for a Sample; None when absent."""
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def type_prior_baseline(
    train_records: Sequence[Any], test_records: Sequence[Any], test_answer_types: Sequence[Any] | None = None
) -> dict:
    """The question-type prior (docs/SPEC.md §5): answer each test question with the majority train answer
    of its (question type, answer type) group, falling back to the majority of its answer type,
    then to the global majority, for groups train never saw.

    Stronger than the exact-question lookup when questions are paraphrased (every "which organ"
    wording shares one group) and needs no image, so it is the floor an image model must clear.
    Records are JSON records or Samples carrying ``question_type``, ``answer_type`` and ``answer``
    (the test records' answers are the gold ones). Adds ``"predictions"`` (one per test question)
    and ``"coverage"``: the share of test questions whose (question type, answer type) group train has."""
    if not train_records:
        raise ValueError("type_prior_baseline: no train records")

    def keys(r):
        qtype = str(_field(r, "question_type") or "").strip().lower()
        return qtype, answer_type_name(_field(r, "answer_type"))

    by_group: dict[tuple[str, str], list] = defaultdict(list)
    by_type: dict[str, list] = defaultdict(list)
    for r in train_records:
        qtype, atype = keys(r)
        if qtype:
            by_group[qtype, atype].append(_field(r, "answer"))
        if atype != "unknown":
            by_type[atype].append(_field(r, "answer"))
    group_prior = {k: majority_answer(v) for k, v in by_group.items()}
    type_prior = {k: majority_answer(v) for k, v in by_type.items()}
    fallback = majority_answer(_field(r, "answer") for r in train_records)
    preds, covered = [], 0
    for r in test_records:
        qtype, atype = keys(r)
        covered += (qtype, atype) in group_prior
        preds.append(group_prior.get((qtype, atype), type_prior.get(atype, fallback)))
    out = vqa_accuracy(preds, [_field(r, "answer") for r in test_records], test_answer_types)
    out["coverage"] = _rate(covered, len(test_records))
    out["predictions"] = preds
    return out


# --------------------------------------------------------------------------- intervals


class ImageBootstrap:
    """95% intervals of accuracies and paired differences by resampling *images* with replacement.

    Questions about one image are not independent (they share its pixels, and a model that
    misreads an image tends to miss all of them), so a question-level bootstrap would be too
    narrow; the image is the unit of resampling (a cluster bootstrap). The resample counts
    ``W [n_boot, n_images]`` are drawn once, so every interval taken from one object uses the same
    draws: ``interval(hits_a - hits_b)`` is a *paired* interval of the difference, and a subset
    (``mask``: a domain, the closed questions) is resampled by the same images.

    Per draw b, a (masked) accuracy is the ratio ``sum_i W[b, i] h_i / sum_i W[b, i] n_i`` with
    ``h_i``, ``n_i`` the hits and questions of image i: each drawn image brings all its questions.
    W is float32 (n_boot x n_images x 4 bytes: 40 MB for 10,000 images), exact for these integer sums."""

    def __init__(self, image_ids: Sequence[Hashable], n_boot: int = 1000, seed: int = 0, level: float = 0.95):
        if not len(image_ids):
            raise ValueError("ImageBootstrap: no questions")
        codes: dict[Hashable, int] = {}
        self.image_index = np.array([codes.setdefault(i, len(codes)) for i in image_ids])  # [Q] question -> image
        self.n_images, self.n_boot, self.seed, self.level = len(codes), n_boot, seed, level
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, self.n_images, size=(n_boot, self.n_images))  # n_images images per resample
        self.weights = np.stack([np.bincount(d, minlength=self.n_images) for d in draws]).astype(np.float32)  # [B, I]

    def _per_draw(self, values: Sequence[float], mask: Sequence[bool] | None) -> np.ndarray:
        """[n_boot] the masked mean of ``values`` in every resample (nan where it drew no masked question)."""
        v = np.asarray(values, dtype=np.float64)
        m = np.ones(len(v)) if mask is None else np.asarray(mask, dtype=np.float64)
        if v.shape != (len(self.image_index),) or m.shape != v.shape:
            raise ValueError(f"ImageBootstrap: {v.shape[0]} values / {m.shape[0]} mask entries for "
                             f"{len(self.image_index)} questions")
        per_image = np.bincount(self.image_index, weights=v * m, minlength=self.n_images).astype(np.float32)  # [I]
        count = np.bincount(self.image_index, weights=m, minlength=self.n_images).astype(np.float32)  # [I]
        num, den = (self.weights @ per_image).astype(np.float64), (self.weights @ count).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, NAN)

    def interval(self, values: Sequence[float], mask: Sequence[bool] | None = None) -> tuple[float, float]:
        """(lo, hi) percentile interval of the mean of ``values`` over the (masked) questions.

        ``values`` are per-question hits (bool / 0-1) for an accuracy, or ``hits_a - hits_b`` for a
        paired difference of two predictors on the same questions. (nan, nan) for an empty subset."""
        return self._percentiles(self._per_draw(values, mask))

    def _percentiles(self, stats: np.ndarray) -> tuple[float, float]:
        stats = stats[~np.isnan(stats)]
        if not len(stats):
            return NAN, NAN
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(stats, [tail, 100 - tail])
        return float(lo), float(hi)

    def seeded_interval(self, per_seed: Sequence[Sequence[float]], mask: Sequence[bool] | None = None
                        ) -> tuple[float, tuple[float, float]]:
        """The mean over seeds of a per-question quantity (``per_seed`` [S, Q]: e.g. each seed's
        ``hits_a - hits_b`` of two arms trained with that seed) and its interval, resampling the seeds
        as well as the images (a two-level bootstrap): the interval holds the run-to-run spread, not
        only which questions were drawn. One seed gives the plain image interval.
        -> (mean, (lo, hi))"""
        v = np.asarray(per_seed, dtype=np.float64)  # [S, Q]
        if v.ndim != 2 or v.shape[1] != len(self.image_index) or not len(v):
            raise ValueError(f"ImageBootstrap.seeded_interval: values of shape {v.shape}, expected "
                             f"[seeds, {len(self.image_index)}]")
        m = np.ones(v.shape[1]) if mask is None else np.asarray(mask, dtype=np.float64)
        mean = float((v.mean(0) * m).sum() / m.sum()) if m.sum() else NAN
        seeds = v.shape[0]
        rng = np.random.default_rng(self.seed + 1)  # independent of the image draws
        picks = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=self.n_boot) if seeds > 1 else np.ones((self.n_boot, 1))
        drawn = (picks @ v) / seeds * m  # [B, Q] the seed-resampled mean, masked
        per_image = np.zeros((self.n_boot, self.n_images))
        np.add.at(per_image.T, self.image_index, drawn.T)  # [B, I]
        count = np.bincount(self.image_index, weights=m, minlength=self.n_images)  # [I]
        num, den = (self.weights * per_image).sum(1), self.weights.astype(np.float64) @ count
        with np.errstate(invalid="ignore", divide="ignore"):
            return mean, self._percentiles(np.where(den > 0, num / den, NAN))


# --------------------------------------------------------------------------- retrieval


def vqa_hits(logits: torch.Tensor, labels: torch.Tensor, is_vqa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, asked) over a batch, as ``vqa_accuracy`` counts them: every VQA sample is asked;
    a label < 0 (a gold answer outside the answer vocabulary) is never correct.
    logits [B, A], labels [B] (answer index, -100 where none), is_vqa [B] bool"""
    if logits.shape[-1] == 0:  # no answer vocabulary (a caption-only set): nothing can be right
        return torch.zeros((), dtype=torch.long, device=labels.device), is_vqa.sum()
    correct = (logits.argmax(-1) == labels) & (labels >= 0) & is_vqa
    return correct.sum(), is_vqa.sum()


def retrieval_ranks(
    sim: torch.Tensor, text_groups: Sequence[Hashable] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the true match for each image (i2t) and each text (t2i).

    ``sim`` is ``[N_img, N_txt]`` with N_img == N_txt and image i paired with text i.
    Ties are counted pessimistically: the true item ranks *below* every candidate scoring the same,
    i.e. rank = #candidates with similarity >= the true pair's. A constant similarity matrix thus
    gives rank N everywhere instead of a flattering 1.

    ``text_groups`` (one label per text, e.g. the normalised caption): texts with one label are
    the same caption, and retrieving any of them is a hit, as no model can tell them apart (a
    procedural set repeats captions: SynthRad's 600 test captions hold 273 texts). For image i with
    T_i the texts of its caption's group, s* = max_{j in T_i} sim[i, j] and rank = 1 + #{j not in
    T_i : sim[i, j] >= s*}; for text j symmetrically over the images whose caption is in j's group.
    With every group a singleton (or None) this is the pair-only rank above."""
    sim = torch.as_tensor(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"retrieval: expected a square [N, N] similarity matrix (pair i <-> i), got {tuple(sim.shape)}"
        )
    if sim.shape[0] == 0:
        raise ValueError("retrieval: empty similarity matrix")
    if not torch.isfinite(sim).all():
        raise ValueError("retrieval: similarity matrix holds NaN or inf; ranks would be meaningless")
    sim = sim.detach().to("cpu", torch.float64)
    if text_groups is None:
        true = sim.diagonal()  # [N]
        i2t = (sim >= true[:, None]).sum(dim=1)  # [N] row i: texts at least as similar as text i
        t2i = (sim >= true[None, :]).sum(dim=0)  # [N] column j: images at least as similar as image j
        return i2t, t2i
    if len(text_groups) != sim.shape[0]:
        raise ValueError(f"retrieval: {len(text_groups)} text groups for {sim.shape[0]} texts")
    codes: dict[Hashable, int] = {}
    group = torch.tensor([codes.setdefault(g, len(codes)) for g in text_groups])  # [N]
    same = group[:, None] == group[None, :]  # [N, N] image i's caption and text j are one caption
    best = sim.masked_fill(~same, -math.inf)
    best_text = best.max(dim=1).values  # [N] s* of image i over its group's texts
    best_image = best.max(dim=0).values  # [N] s* of text j over its group's images
    i2t = 1 + ((sim >= best_text[:, None]) & ~same).sum(dim=1)
    t2i = 1 + ((sim >= best_image[None, :]) & ~same).sum(dim=0)
    return i2t, t2i


def chance_mean_rank(text_groups: Sequence[Hashable]) -> float:
    """The ``mean_rank`` of :func:`retrieval_metrics` (both directions, grouped) expected from a model
    that knows nothing: random similarities, except that identical captions score identically, as
    they do under any text encoder. (N + 1) / 2 when every caption is distinct.

    Image -> text: the captions come in blocks (a group of k copies ties), the true block of k ties
    with none of the other blocks, and each other block lies above it with probability 1/2:
    1 + (N - k) / 2. Text -> image: the images are distinct, so the first of the k true images
    among N sits at (N + 1) / (k + 1)."""
    sizes = Counter(text_groups)
    n = len(text_groups)
    if not n:
        return NAN
    i2t = sum(1 + (n - sizes[g]) / 2 for g in text_groups) / n
    t2i = sum((n + 1) / (sizes[g] + 1) for g in text_groups) / n
    return (i2t + t2i) / 2


def retrieval_metrics(sim: torch.Tensor, ks: Sequence[int] = RECALL_KS,
                      text_groups: Sequence[Hashable] | None = None) -> dict:
    """Image->text and text->image recall@K and mean/median rank (ranks 1-based, ties pessimistic;
    identical captions count as one, see :func:`retrieval_ranks`).

    Returns ``i2t_r{k}``, ``t2i_r{k}`` for each k, ``i2t_mean_rank``, ``t2i_mean_rank``,
    ``i2t_median_rank``, ``t2i_median_rank``, ``mean_rank`` (mean of the two directions) and ``n``."""
    i2t, t2i = retrieval_ranks(sim, text_groups)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = (ranks <= k).double().mean().item()
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = ranks.double().mean().item()
        # lower median for even N, so the value is always an attained rank
        out[f"{name}_median_rank"] = ranks.double().median().item()
    out["mean_rank"] = (out["i2t_mean_rank"] + out["t2i_mean_rank"]) / 2
    out["n"] = int(i2t.numel())
    return out


# --------------------------------------------------------------------------- robustness


def better(metric: str, *, loss: bool = False) -> str:
    """The direction in which ``metric`` improves, "min" or "max": ranks (``*rank*``) and losses
    (``*loss*``, or any loss term when ``loss``: ``val_con_inter`` ...) go down; accuracies and
    recalls go up. The one definition: robustness drops and the sweep's mode check."""
    return "min" if loss or "rank" in metric or "loss" in metric else "max"


def lower_is_better(metric: str) -> bool:
    return better(metric) == "min"


def degradation(clean: Mapping[str, Any], perturbed: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict:
    """How much worse ``perturbed`` is than ``clean``, per metric, signed so that positive = worse.

    For each numeric key present in both (or in ``keys``): ``{key}_drop`` = clean - perturbed for
    higher-is-better metrics and perturbed - clean for lower-is-better ones (ranks), and
    ``{key}_rel_drop`` = drop / |clean| (``nan`` when clean is 0). Counts (``n*``, ``correct*``) are skipped."""
    if keys is None:
        keys = [
            k
            for k in clean
            if k in perturbed and not _is_count(k) and _is_number(clean[k]) and _is_number(perturbed[k])
        ]
    out = {}
    for k in keys:
        c, p = float(clean[k]), float(perturbed[k])
        drop = p - c if lower_is_better(k) else c - p
        out[f"{k}_drop"] = drop
        out[f"{k}_rel_drop"] = drop / abs(c) if c else NAN
    return out


def degradation_table(results: Mapping[str, Mapping[str, Any]], clean_key: str = "none") -> dict[str, dict]:
    """:func:`degradation` of every entry of ``results`` (e.g. keyed by severity) against ``results[clean_key]``."""
    if clean_key not in results:
        raise KeyError(f"degradation_table: no clean entry '{clean_key}' among {list(results)}")
    clean = results[clean_key]
    return {name: degradation(clean, res) for name, res in results.items() if name != clean_key}


def _is_count(key: str) -> bool:
    return key == "n" or key.startswith(("n_", "correct")) or key == "coverage"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- Markdown


def format_value(v: Any, *, floatfmt: str = ".4f", percent: bool = False) -> str:
    """A cell: ints as is, floats with ``floatfmt`` (or as % with one decimal), nan/None as 'n/a'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v).replace("|", "\\|").replace("\n", " ")
    if isinstance(v, int):
        return str(v)
    return f"{100 * v:.1f}%" if percent else format(v, floatfmt)


def format_ci(ci: Sequence[float] | None) -> str:
    """An interval of fractions in percent points: "[51.0, 55.2]"; "" when there is none."""
    if not ci or any(c is None or c != c for c in ci):
        return ""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_interval(v: Any, ci: Sequence[float] | None, *, signed: bool = False) -> str:
    """A fraction with its interval, in percent: "53.1% [51.0, 55.2]"; ``signed`` for a difference
    in points ("+4.2 points [1.0, 7.3]"). 'n/a' for a missing value; no brackets without an interval."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    head = f"{100 * v:+.1f} points" if signed else format_value(float(v), percent=True)
    return f"{head} {format_ci(ci)}".rstrip()


def effect_shown(ci: Sequence[float] | None) -> bool:
    """Whether a paired difference's interval excludes 0 (an interval touching 0 shows no effect)."""
    return ci is not None and not any(c != c for c in ci) and (ci[0] > 0 or ci[1] < 0)


def markdown_table(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    index_name: str = "",
    floatfmt: str = ".4f",
    percent: bool | Iterable[str] = False,
) -> str:
    """Render results as a GitHub Markdown table.

    - ``{"clean": {...}, "strong": {...}}`` (a mapping of row name -> metrics dict): one row per entry,
      first column ``index_name``;
    - ``[{...}, {...}]``: one row per dict;
    - a flat metrics dict ``{"overall": 0.7, ...}``: a two-column ``metric | value`` table.

    ``columns`` picks and orders the columns (default: the union in first-seen order).
    ``percent=True`` formats every float as %, or pass the names of the columns to format so."""
    if isinstance(results, Mapping) and results and not any(isinstance(v, Mapping) for v in results.values()):
        rows = [{"metric": k, "value": v} for k, v in results.items()]
        return markdown_table(rows, ["metric", "value"], floatfmt=floatfmt, percent=percent)
    if isinstance(results, Mapping):
        rows = [{index_name or " ": name, **dict(metrics)} for name, metrics in results.items()]
        lead = [index_name or " "]
    else:
        rows, lead = [dict(r) for r in results], []
    if columns is None:
        columns = list(lead)
        for r in rows:
            columns += [k for k in r if k not in columns]
    else:
        columns = lead + [c for c in columns if c not in lead]
    pct = set(columns) if percent is True else set() if percent is False else set(percent)
    lines = [
        "| " + " | ".join(format_value(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in rows:
        cells = [format_value(r.get(c, ""), floatfmt=floatfmt, percent=c in pct) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
