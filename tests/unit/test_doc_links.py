"""The documentation stands alone: every relative link in the repository's Markdown resolves to
a file of the repository (and a `#fragment` to a heading of it), and no file points at notes
outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The documents users read first; each must exist (the rest of the Markdown is checked too).
REQUIRED_DOCS = ("README.md", "SECURITY.md", "ARCHITECTURE.md", "docs/contract.md")
# Built from parts so that this file does not name what it looks for.
OUTSIDE_NOTES = ("../" + "shared", "/work/" + "shared")

_FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def repository_files() -> list[Path]:
    """The repository's files: tracked or new, not ignored (a fresh clone: the tracked ones)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True, timeout=30,
        ).stdout.decode("utf-8").split("\0")  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available to list the repository's files")
    return sorted(ROOT / name for name in listed if name and (ROOT / name).is_file())


def markdown_files() -> list[Path]:
    return [path for path in repository_files() if path.suffix == ".md"]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCED.sub("", path.read_text(encoding="utf-8"))
    return {slug(heading) for heading in _HEADING.findall(text)}


def links(path: Path) -> list[str]:
    text = _FENCED.sub("", path.read_text(encoding="utf-8"))
    text = _CODE_SPAN.sub("", text)
    return _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `path` that do not resolve inside the repository at `root`."""
    broken = []
    for target in links(path):
        if _SCHEME.match(target):
            continue  # http:, https:, mailto: ...: not a file of the repository
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.is_relative_to(root.resolve()) or not destination.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target} (no such heading)")
    return broken


def test_the_main_documents_exist() -> None:
    for name in REQUIRED_DOCS:
        assert (ROOT / name).is_file(), name
    assert {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")} >= {"docs/contract.md"}


def test_every_relative_markdown_link_resolves_inside_the_repository() -> None:
    checked = markdown_files()
    names = {str(path.relative_to(ROOT)) for path in checked}
    assert set(REQUIRED_DOCS) <= names
    problems = {
        str(path.relative_to(ROOT)): broken for path in checked if (broken := broken_links(path))
    }
    assert problems == {}


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "contract.md").write_text("# The contract\n\n## Returning the caller (REFER, BYE)\n")
    probe = docs / "probe.md"
    probe.write_text(
        "[fine](contract.md#returning-the-caller-refer-bye) [web](https://example.com/x.md)\n"
        "[here](#local) `[code](missing.md)`\n\n# Local\n\n"
        "[a](missing.md) [b](contract.md#no-such-heading) [c](../../outside.md)\n"
        "[d]: ../README.md\n",
        encoding="utf-8",
    )
    assert [problem.split(" ")[0] for problem in broken_links(probe, tmp_path)] == [
        "missing.md", "contract.md#no-such-heading", "../../outside.md", "../README.md",
    ]  # fmt: skip


def test_no_file_points_at_notes_outside_the_repository() -> None:
    mentions = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (recordings, pcaps)
        mentions += [f"{path.relative_to(ROOT)}: {needle}" for needle in OUTSIDE_NOTES
                     if needle in text]  # fmt: skip
    assert mentions == []
