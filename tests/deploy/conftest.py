"""Shared fixtures for the deployment tests: paths, real tools, rendered manifests."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prometheus import require_binary

from .kustomize import build

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["tomllib"]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
KUBERNETES = EXAMPLES / "kubernetes"
RULES_DIR = EXAMPLES / "prometheus" / "rules"
DATA = Path(__file__).resolve().parent / "data"

#: Every kustomization users can apply.
OVERLAYS = ("base", "overlays/prometheus-operator", "overlays/per-process-gpu", "overlays/nvidia-default-runtime")


def run_tool(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; the result's stdout and stderr are joined for the assertion message."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def kubernetes_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/kubernetes with the shared-key.env a user writes before applying."""
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, root, ignore=shutil.ignore_patterns("shared-key.env"))
    (root / "base" / "shared-key.env").write_text("shared-key=test-key-0123456789abcdef\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def rendered(kubernetes_tree: Path) -> dict[str, list[dict]]:
    """What `kustomize build` gives for the base and every overlay."""
    return {name: build(kubernetes_tree / name) for name in OVERLAYS}


def load_script(path: Path):
    """Import a script of examples/ (not a package) as a module, under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
