"""The generated docs are current, the README stays small and its links resolve."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current():
    make_docs = _make_docs()
    for rel, make in make_docs.PAGES.items():
        assert (ROOT / rel).read_text(encoding="utf-8") == make(), (
            f"{rel} is stale: run scripts/make_docs.py"
        )


def test_readme_is_small_and_its_links_resolve():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 12 * 1024
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
