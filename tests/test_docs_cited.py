"""Code, tests and docs cite only documents a user of this repository has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["dukd_ray", "tests", "jobs", "benchmarks", "cluster", "docs", "README.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt"}
# Markdown files the service writes into a run, sweep or chain folder: outputs, not documents to look up.
OUTPUTS = {"report.md", "trials.md", "reproduce.md"}
CITATION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def cited_documents(text: str) -> set[str]:
    return set(CITATION.findall(text))


def missing(cited: str) -> bool:
    """A citation with a folder is a path from the repository root; a bare name is a sibling doc."""
    if cited in OUTPUTS or cited.endswith(tuple(f"/{o}" for o in OUTPUTS)):
        return False
    if "/" in cited:
        return not (ROOT / cited).is_file()
    return not ((ROOT / cited).is_file() or (ROOT / "docs" / cited).is_file())


def test_every_cited_document_exists():
    bad = []
    for entry in SCANNED:
        base = ROOT / entry
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in SUFFIXES]
        for path in (p for p in files if p != Path(__file__).resolve()):  # this file's examples are fake
            for cited in cited_documents(path.read_text(encoding="utf-8")):
                if missing(cited):
                    bad.append(f"{path.relative_to(ROOT)} cites {cited}")
    assert not bad, "\n".join(sorted(bad))


def test_the_check_flags_a_document_the_repository_lacks():
    text = "see dukd.md and docs/distill.md and shared/design/eval.md, written to report.md"
    assert {c for c in cited_documents(text) if missing(c)} == {"dukd.md", "shared/design/eval.md"}
