"""The documentation's links stay inside the repository and point at something that exists.

Every relative link (and image) in README.md and docs/*.md must name a file or folder of this
repository (a clone ships nothing outside it), and a ``#fragment`` must name a heading of the
Markdown file it points at (GitHub's heading ids).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# `[label]: destination "optional title"` alone on its line (not prose such as "[-1, 1]: base ...")
_REFDEF = re.compile(r"""^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*$""",
                     re.M)
_HTML = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The Markdown without code blocks and code spans (their brackets are not links)."""
    return _CODE.sub("", _FENCE.sub("", text))


def links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return [m.group(1) for rx in (_INLINE, _REFDEF, _HTML) for m in rx.finditer(text)]


def heading_ids(path: Path) -> set[str]:
    """GitHub's ids for the headings of a Markdown file (lower case, punctuation dropped, spaces
    to hyphens, repeats numbered -1, -2, ...)."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"<[^>]+>", "", m.group(1))
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def check_link(doc: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``doc``) is broken, or None."""
    if _EXTERNAL.match(target) or target.startswith("//"):
        return None  # a web address: not checked here (no network in the tests)
    target = unquote(target)
    file_part, _, fragment = target.partition("#")
    dest = (doc.parent / file_part).resolve() if file_part else doc
    if file_part.startswith("/") or not dest.is_relative_to(ROOT):
        return f"{target!r} leaves the repository"
    if not dest.exists():
        return f"{target!r}: {dest.relative_to(ROOT)} does not exist"
    if fragment and dest.suffix == ".md" and fragment.lower() not in heading_ids(dest):
        return f"{target!r}: {dest.relative_to(ROOT)} has no heading #{fragment}"
    return None


def test_the_docs_are_found():
    assert (ROOT / "README.md") in DOCS and len(DOCS) >= 5


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_inside_the_repository(doc):
    broken = [why for target in links(doc) if (why := check_link(doc, target))]
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_catches_what_it_should(tmp_path):
    readme = ROOT / "README.md"
    assert check_link(readme, "../shared/design/mergevla.md") == \
        "'../shared/design/mergevla.md' leaves the repository"
    assert "does not exist" in check_link(readme, "docs/no_such_file.md")
    assert "no heading" in check_link(readme, "docs/results.md#no-such-heading")
    assert check_link(readme, "docs/driftmoe.md") is None
    assert check_link(readme, "https://example.org/x") is None
    doc = tmp_path / "x.md"
    doc.write_text("# A title, with: punctuation\n## Results\n## Results\n```\n# not a heading\n```\n"
                   "[a](b.md) ![img](c.png) `[no](link.md)` [ref]: d.md\n<a href=\"e.md\">e</a>\n"
                   "[-1, 1]: base velocity and yaw\n[f]: f.md \"title\"\n")
    assert heading_ids(doc) == {"a-title-with-punctuation", "results", "results-1"}
    assert links(doc) == ["b.md", "c.png", "f.md", "e.md"]
