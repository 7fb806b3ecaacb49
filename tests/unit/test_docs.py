"""The README is a short front page; the rest lives in docs/ (built strictly by make docs)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_a_front_page_of_at_most_150_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_every_relative_link_of_the_readme_and_the_docs_points_to_a_file():
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).is_file(), f"{page.relative_to(REPO)} links to a missing {target}"


def test_the_site_home_is_the_readme_with_links_inside_docs():
    """docs/index.md is the README, its docs/ links made relative to docs/ (edit both together)."""
    readme = README.read_text(encoding="utf-8")
    assert (REPO / "docs" / "index.md").read_text(encoding="utf-8") == readme.replace("](docs/", "](")


def test_every_docs_page_is_in_the_site_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, flags=re.M))
    assert pages == listed, pages ^ listed


def test_ci_runs_the_test_command_the_readme_shows():
    """The README's marked bash block is the install command and the test command, and .ci/run
    runs exactly those, in that order, inside its fresh virtual environment: what a newcomer
    types is what CI runs."""
    lines = (REPO / "README.md").read_text().splitlines()
    (marker,) = [i for i, line in enumerate(lines) if line.startswith("<!-- test-command:")]
    assert lines[marker + 1] == "```bash"
    end = lines.index("```", marker + 2)
    shown = lines[marker + 2 : end]
    assert shown == ["make install-cpu", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#")]
    at = commands.index(shown[0])
    assert commands[at : at + len(shown)] == shown  # the block's commands, consecutive and in order
    assert commands.index(". .venv/bin/activate") < at  # in the new venv
