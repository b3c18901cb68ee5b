"""Shared fixtures for the deployment tests: paths, real tools, rendered manifests.

The Kubernetes manifests are rendered by the real kustomize, the one kubectl
bundles (``kubectl kustomize``), once per session; a missing or too old kubectl
fails the tests that need it with what to install.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.prometheus import require_binary

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
OVERLAYS = ("base", "overlays/prometheus-operator", "overlays/per-process-gpu", "overlays/nvidia-default-runtime",
            "overlays/replicated")


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


#: kustomize v5 is the first with ``patches`` as the one patch field (the
#: overlays use it with ``target``) and the one kubectl bundles since 1.27.
KUSTOMIZE_MIN = (5, 0)

KUBECTL_MISSING = (
    "kubectl is not installed: tests/deploy renders examples/kubernetes with the real kustomize "
    "(`kubectl kustomize`, kustomize v{min}+). Install kubectl 1.27 or newer: the `kubectl` package "
    "of the Kubernetes project's apt repository or of the Google Cloud CLI's (CI's image has it "
    "as /usr/bin/kubectl); Debian 12's kubernetes-client is 1.20 and too old"
)


class KustomizeBuildError(Exception):
    """``kubectl kustomize`` refused a kustomization; the message is its stderr."""


@pytest.fixture(scope="session")
def kubectl() -> str:
    """The path of a kubectl whose bundled kustomize is v5 or newer; fails (never skips) otherwise."""
    minimum = ".".join(map(str, KUSTOMIZE_MIN))
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(KUBECTL_MISSING.format(min=minimum), pytrace=False)
    result = run_tool(path, "version", "--client", "--output=json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout).get("kustomizeVersion", "")
    match = re.match(r"v(\d+)\.(\d+)", found)
    if match is None or (int(match[1]), int(match[2])) < KUSTOMIZE_MIN:
        pytest.fail(f"{path} bundles kustomize {found or 'of unknown version'}; " + KUBECTL_MISSING.format(min=minimum),
                    pytrace=False)
    return path


def kustomize_build(kubectl: str, directory: Path) -> list[dict]:
    """Render a kustomization directory with ``kubectl kustomize`` into a list of objects.

    Raises KustomizeBuildError with kustomize's own message when it refuses the
    directory (a missing file, a failed JSON 6902 ``test``).
    """
    result = run_tool(kubectl, "kustomize", str(directory))
    if result.returncode != 0:
        raise KustomizeBuildError(result.stderr.strip() or result.stdout.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.fixture(scope="session")
def rendered(kubectl: str, kubernetes_tree: Path) -> dict[str, list[dict]]:
    """What `kubectl kustomize` gives for the base and every overlay, rendered once per session."""
    return {name: kustomize_build(kubectl, kubernetes_tree / name) for name in OVERLAYS}


def load_script(path: Path):
    """Import a script of examples/ (not a package) as a module, under its file name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
