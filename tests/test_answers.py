"""VQA-v2-style answer normalisation and the answer vocabulary order."""

from __future__ import annotations

import pytest

from raymmr.data.answers import build_answer_vocab, normalize_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes", "yes"),
        ("  YES. ", "yes"),
        ("two", "2"),
        ("Ten", "10"),
        ("none", "0"),  # VQA-v2's manual map, kept for paper compatibility
        (4, "4"),
        (4.0, "4"),
        (2.5, "2.5"),
        (True, "yes"),
        ("the Liver", "liver"),
        ("an MRI", "mri"),
        ("A large mass", "large mass"),
        ("x-ray", "x ray"),
        ("X-Ray", "x ray"),
        ("T1/T2", "t1 t2"),
        ("left (lt)", "left lt"),
        ("left, right", "left right"),
        ("1,000", "1000"),
        ("2.5 cm", "2.5 cm"),
        ("Is it?", "is it"),
        ("patient's", "patient's"),
        ("multiple\tnodules\n", "multiple nodules"),
        ("", ""),
        ("the", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_is_idempotent():
    for raw in ["The Left Lung.", "x-ray", "Two", "T1/T2", "1,000 mg"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


def test_normalize_answer_rejects_other_types():
    with pytest.raises(TypeError, match="str or int"):
        normalize_answer(None)


def test_build_answer_vocab_order_and_merging():
    answers = ["Yes", "yes", "no", "No.", "yes", "b", "a", "the", 4, "four", "", "Kidney"]
    # yes x3; "4" x2 and "no" x2 tie -> alphabetical; then singletons alphabetically; empties dropped.
    assert build_answer_vocab(answers) == ["yes", "4", "no", "b", "kidney"]
    assert build_answer_vocab([]) == []
