"""Answer normalisation and answer vocabularies (docs/SPEC.md §1, §5).

``normalize_answer`` follows the VQA-v2 evaluation normalisation that M3AE and its successors
apply to medical VQA answers (``normalize_word`` in their ``glossary.py``), so answer
vocabularies and exact-match accuracies stay comparable with the papers:

1. lower-case, strip, whitespace collapsed;
2. commas inside numbers dropped ("1,000" -> "1000");
3. punctuation (VQA-v2's list: ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``): removed when it
   touches a space ("left (lt)" -> "left lt"), otherwise replaced by a space ("x-ray" -> "x ray",
   "t1/t2" -> "t1 t2"), exactly as VQA-v2 does, so hyphenated and spaced spellings meet.
   One deliberate difference: VQA-v2 deletes *all* punctuation once a "1,000" pattern occurs;
   here only the number comma goes;
4. periods are kept only between digits ("2.5 cm" stays, "yes." loses its period);
5. number words zero..ten -> digits, and "none" -> "0" (the VQA-v2 manual map; kept for
   compatibility: prediction and reference are normalised alike, so accuracy is unaffected);
6. the articles a / an / the are dropped.

Apostrophes are kept (VQA-v2 keeps them too), so "patient's" stays one word.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# VQA-v2's punctuation list (period handled separately, apostrophe deliberately absent).
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d)")
# A period that is not between two digits ("yes." / "e.g" lose it, "2.5" keeps it).
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_SPACES = re.compile(r"\s+")
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(s: str | int | float | bool) -> str:
    """Normalise one answer (or predicted answer) the VQA-v2 way; see the module docstring.

    Ints and floats (VQA-RAD stores some answers as JSON numbers, e.g. ``4``) become their
    decimal text; booleans become "yes"/"no". Returns "" for an empty answer.
    """
    if isinstance(s, bool):  # bool is an int subclass: test it first
        return "yes" if s else "no"
    if isinstance(s, int | float):
        s = str(int(s)) if float(s).is_integer() else str(s)
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer expects str or int, got {type(s).__name__}: {s!r}")
    text = _SPACES.sub(" ", s.lower()).strip()
    if not text:
        return ""
    text = _NUMBER_COMMA.sub("", text)
    for p in _PUNCT:
        if p not in text:
            continue
        # VQA-v2: drop punctuation that touches a space; otherwise it joins words, so split them.
        if f" {p}" in text or f"{p} " in text:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def build_answer_vocab(answers: Iterable[str | int]) -> list[str]:
    """The answer vocabulary: distinct normalised answers, most frequent first, ties alphabetical.

    Empty answers (after normalisation) are dropped. The order is deterministic so that two
    builds over the same answers give the same class indices.
    """
    counts = Counter(a for a in (normalize_answer(x) for x in answers) if a)
    return sorted(counts, key=lambda a: (-counts[a], a))
