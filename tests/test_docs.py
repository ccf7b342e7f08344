"""The documentation holds as a new user tries it: every relative link in the README, docs/ and the changelog
resolves to a file and, with a #fragment, to a heading in it; the README stays a front door (two set-up commands that
the Makefile has, at most ~200 lines); every `python run_pipeline.py ...` command in the README and the usage guide
parses with the CLI's own parser, and the files it names from this repository exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import run_pipeline

PROJECT = Path(__file__).resolve().parents[1]
DOCUMENTS = [PROJECT / "README.md", PROJECT / "CHANGELOG.md", *sorted((PROJECT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # (code blocks hold no links)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif fragment and slug(fragment) != fragment:
            problems.append(f"{path.name}: {target}: not an anchor GitHub makes")
        elif fragment and fragment not in headings(destination):
            problems.append(f"{path.name}: {target}: no such heading in {destination.name}")
    return problems


def test_every_document_exists_and_every_link_resolves():
    assert all(path.exists() for path in DOCUMENTS)
    problems = [problem for path in DOCUMENTS for problem in broken_links(path)]
    assert problems == []


def test_the_link_check_catches_a_missing_file_and_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Two words\n\n[ok](#two-words) [gone](missing.md) [no](#three) "
                    "[web](https://example.com)\n```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["page.md: missing.md: no such file", "page.md: #three: no such heading in page.md"]


def test_the_readme_is_a_front_door_with_two_set_up_commands():
    readme = (PROJECT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    makefile = (PROJECT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme and re.search(rf"^{target}:", makefile, re.M)
    for document in ("docs/usage.md", "docs/outputs.md", "docs/live.md", "docs/batch-and-clusters.md",
                     "docs/architecture.md", "docs/benchmarks.md", "docs/testing.md", "CHANGELOG.md"):
        assert f"]({document}" in readme, f"the README does not link {document}"


def commands(path: Path) -> list[list[str]]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python run_pipeline.py"):
                words = shlex.split(line)[2:]
                found.append(words[:-1] if words[-1:] == ["..."] else words)  # `...`: and the flags above
    return found


DOCUMENTED = [(path.name, argv) for path in (PROJECT / "README.md", PROJECT / "docs" / "usage.md")
              for argv in commands(path)]


def test_the_documents_hold_commands_to_try():
    assert len(DOCUMENTED) >= 10


@pytest.mark.parametrize("document, argv", DOCUMENTED, ids=[" ".join(a)[:60] for _, a in DOCUMENTED])
def test_each_documented_command_parses_and_names_files_that_exist(document, argv):
    parse = {"batch": run_pipeline.parse_batch_args, "live": run_pipeline.parse_live_args}.get(argv[0])
    try:
        parse(argv[1:]) if parse else run_pipeline.parse_args(argv)
    except SystemExit as exit_:
        raise AssertionError(f"{document}: `{' '.join(argv)}` does not parse (exit {exit_.code})") from None
    for word in argv:
        if word.startswith(("pipeline/", "benchmarks/", "docs/")):
            assert (PROJECT / word).exists(), f"{document}: {word} does not exist"
