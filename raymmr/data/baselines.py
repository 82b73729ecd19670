"""Trivial VQA baselines that a multimodal model must clearly beat (SPEC §1).

- *majority*: always answer the most frequent train answer;
- *question-only*: answer the most frequent train answer of the same normalised question
  text (falling back to the overall majority for unseen questions). This is the best a model
  that ignores the image can do when each question text is answered independently.

Both are fitted on one split and scored on another, per answer type and per domain, so they
sit beside the model's numbers in the README and in evaluation reports.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping


def normalize_question(text: str) -> str:
    """Question text as the question-only baseline groups it: the answer normalisation (lower-case,
    punctuation, number words, articles), so 'Is there a lesion?' == 'is there lesion'. The same
    rule as ``raymmr.eval.metrics.question_only_baseline``, so both report the same numbers."""
    from raymmr.data.answers import normalize_answer

    return normalize_answer(text)


def _field(record, name: str):
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def _vqa(records: Iterable) -> list:
    return [r for r in records if _field(r, "kind") == "vqa" and _field(r, "answer")]


def fit_baselines(train_records: Iterable) -> dict:
    """Majority answer overall and per normalised question, from VQA records (Sample or dict)."""
    overall: Counter = Counter()
    per_question: dict[str, Counter] = defaultdict(Counter)
    for r in _vqa(train_records):
        overall[_field(r, "answer")] += 1
        per_question[normalize_question(_field(r, "question"))][_field(r, "answer")] += 1
    if not overall:
        raise ValueError("fit_baselines: the records hold no VQA sample with an answer")
    # ties broken alphabetically so the baseline is deterministic
    best = lambda c: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # noqa: E731
    return {"majority": best(overall), "per_question": {q: best(c) for q, c in per_question.items()}}


def score_baselines(fitted: dict, eval_records: Iterable) -> dict:
    """Accuracy of both baselines on ``eval_records``: overall, per answer type and per domain.

    Returns ``{"majority": {"overall": acc, "open": acc, "closed": acc, "domain/<d>": acc},
    "question_only": {...}, "n": count}``; keys without samples are left out.
    """
    hits: dict[str, dict[str, list[int]]] = {"majority": defaultdict(list), "question_only": defaultdict(list)}
    records = _vqa(eval_records)
    for r in records:
        answer = _field(r, "answer")
        guess = {
            "majority": fitted["majority"],
            "question_only": fitted["per_question"].get(normalize_question(_field(r, "question")), fitted["majority"]),
        }
        groups = ["overall", _field(r, "answer_type") or "unknown", f"domain/{_field(r, 'domain') or 'unknown'}"]
        for name, g in guess.items():
            for group in groups:
                hits[name][group].append(int(g == answer))
    out: dict = {name: {k: sum(v) / len(v) for k, v in sorted(h.items())} for name, h in hits.items()}
    out["n"] = len(records)
    return out


def trivial_baselines(train_records: Iterable, eval_records: Iterable) -> dict:
    """Fit on ``train_records``, score on ``eval_records`` (Sample objects or record dicts)."""
    return score_baselines(fit_baselines(train_records), eval_records)
