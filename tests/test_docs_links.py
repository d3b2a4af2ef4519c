"""The documentation holds together: every relative link in README.md and docs/ points at a file that exists, the
README stays a short front door, and no page cites an issue number that a reader of the repository cannot see."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# [text](target) or ![alt](target "title"); the text may hold one level of brackets ("[[1]](#papers)")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
EXTERNAL = ("http://", "https://", "mailto:")
ISSUE = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code blocks and code spans (a code span inside a link's text
    is kept as a placeholder, so that [`path`](path) still counts)."""
    text = FENCE.sub("", text)
    text = INLINE_CODE.sub("code", text)
    return [m.group(1).strip("<>") for m in LINK.finditer(text)]


def test_links_resolve():
    broken = []
    for path in doc_files():
        for target in links(path.read_text(encoding="utf-8")):
            if target.lower().startswith(EXTERNAL) or target.startswith("#"):
                continue
            relative = target.split("#", 1)[0]
            if not relative:
                continue
            if not (path.parent / relative).exists():
                broken.append(f"{path.relative_to(ROOT)}: ({target})")
    assert not broken, f"{len(broken)} broken relative link(s):\n" + "\n".join(broken)


def test_readme_is_short_and_no_issue_numbers():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = len(readme.splitlines())
    assert lines <= 220, f"README.md has {lines} lines; at most 220 (the rest belongs in docs/)"
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in doc_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ISSUE.search(line)
    ]
    assert not cited, "issue numbers that readers of the repository cannot see:\n" + "\n".join(cited)
