"""The Python versions the package claims are the ones CI runs and the README names."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, a core dependency there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def claimed_by_classifiers() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]


def run_by_ci() -> list[str]:
    match = re.search(r'^SUPPORTED="([^"]+)"$', (REPO / ".ci" / "run").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, ".ci/run no longer says which versions it runs"
    return match.group(1).split()


def test_ci_runs_every_version_the_classifiers_claim() -> None:
    assert claimed_by_classifiers() == run_by_ci() == ["3.10", "3.11", "3.12", "3.13"]


def test_requires_python_starts_at_the_oldest_claimed_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == f">={claimed_by_classifiers()[0]}"


def test_the_readme_names_the_same_versions() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    *first, last = claimed_by_classifiers()
    assert f"Python {', '.join(first)} or {last}" in readme
