"""The design knowledge the code relies on lives in the repository: every document a docstring,
comment or README cites (``docs/SPEC.md §5``, ``docs/DATA_FORMATS.md``) is there, with the cited
section, and nothing cites a document by a name that is not a path in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"(?<![\w/.])(docs/[A-Za-z_]+\.md)((?:\s*§\s*\d+(?:,\s*§\d+)*)?)")
BARE = re.compile(r"(?<![\w/.])(SPEC §|SPEC\.md|DATA_FORMATS\.md|RAY_NOTES\.md|STYLE\.md|shared/)")


def sources() -> dict[Path, str]:
    files = [*ROOT.glob("*.md"), *(ROOT / "cluster").glob("*.md")]
    for folder in ("raymmr", "jobs", "tests"):
        files += (ROOT / folder).rglob("*.py")
        files += (ROOT / folder).rglob("*.yaml")  # presets and search spaces explain themselves too
    return {p: p.read_text() for p in sorted(files) if p.name != "test_docs.py"}


def citations(text: str) -> list[tuple[str, list[int]]]:
    return [(m.group(1), [int(n) for n in re.findall(r"\d+", m.group(2))]) for m in CITED.finditer(text)]


def test_every_cited_document_and_section_is_in_the_repository():
    found, missing = 0, []
    for path, text in sources().items():
        for doc, sections in citations(text):
            found += 1
            target = ROOT / doc
            if not target.is_file():
                missing.append(f"{path.relative_to(ROOT)}: {doc}")
                continue
            headings = {int(n) for n in re.findall(r"^## (\d+)\.", target.read_text(), flags=re.M)}
            missing += [f"{path.relative_to(ROOT)}: {doc} §{n}" for n in sections if n not in headings]
    assert found >= 20, f"only {found} citations found: has the pattern stopped matching?"
    assert not missing, missing


def test_nothing_cites_a_document_outside_the_repository():
    bare = [f"{p.relative_to(ROOT)}: {m.group(1)}" for p, text in sources().items() for m in BARE.finditer(text)]
    assert not bare, bare


def test_the_checks_catch_a_missing_document_or_section():
    assert citations("see docs/SPEC.md §5, and docs/NOPE.md") == [("docs/SPEC.md", [5]), ("docs/NOPE.md", [])]
    assert BARE.search("the protocol (SPEC §5)") and BARE.search("layouts (DATA_FORMATS.md)")
    assert not BARE.search("the protocol (docs/SPEC.md §5)")


# Dotted names that look like raymmr's but are not code: an example, and MLflow tag names.
NOT_CODE = {"raymmr.x", "raymmr.run_dir", "raymmr.stage"}


def unresolved(reference: str) -> bool:
    """Whether ``raymmr.a.b.c`` names no module, or no attribute of its longest module prefix."""
    import importlib

    parts = reference.split(".")
    for i in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for attr in parts[i:]:
        if not hasattr(target, attr):
            return True
        target = getattr(target, attr)
    return False


def test_every_dotted_raymmr_name_in_docs_and_docstrings_exists():
    """After a function or module moves, a README line or docstring naming its old home fails here."""
    found, stale = 0, []
    for path, text in sources().items():
        if path.suffix == ".yaml" or path.parent.name == "tests":
            continue
        for m in re.finditer(r"(?<![\w/.])(raymmr(?:\.[A-Za-z_]\w*)+)", text):
            found += 1
            if m.group(1) not in NOT_CODE and unresolved(m.group(1)):
                stale.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert found > 100, f"only {found} references found"
    assert not stale, stale
    assert unresolved("raymmr.tune.runner.tpe_startup_trials") and not unresolved("raymmr.tune.study.tpe_startup_trials")
