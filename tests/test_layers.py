"""The layers follow the data: every import under ``qwen_fluent/`` points down.

Each module is parsed with :mod:`ast` (nothing is imported), relative imports
are resolved against the module's package, and every import of ours, at module
level or inside a function (lazy imports count), an ``if TYPE_CHECKING`` block
or an ``importlib.import_module("...")`` / ``__import__("...")`` call with a
literal name, must be allowed by this table. A module may always import its
own package. Floors, bottom up, one per line (left: the importing part; right:
what it may import besides itself):

    __init__ (qwen_fluent/__init__.py)  nothing of ours
    forward, records, gpu, stats,        qwen_fluent.__version__ only
    instrument (in the inference server),
    logsample (sampled log lines)
    metrics                              forward, records, gpu, stats, __version__
    analysis (analyze: logs offline)     forward, records, gpu, stats, __version__ (the floor of metrics)
    server                               the bottom floor + metrics (the /metrics endpoint renders its exposition)
    client (a Forward client: send, demo) the bottom floor + metrics, as the server it talks to
    pipeline, stdout                     the bottom floor + metrics
    audit (the sensitive-data audit)     the bottom floor + metrics: a sink beside the metrics sink
    reliability (exactly once)           the bottom floor + metrics: wraps the metrics sink, checkpoints the aggregates
    config (the app config)              the bottom floor + metrics + ServerConfig from server
                                         + ReliabilityConfig from reliability + AuditConfig from audit
    app                                  anything but cli and __main__
    workers (serve --workers N)          anything but cli and __main__: the app, run N times and merged
    cli, __main__                        anything

Nothing under ``qwen_fluent/`` imports ``tests`` (test doubles live there),
``bench`` or ``scripts``. A new top-level module or package under
``qwen_fluent/`` fails here until it has a line in :data:`ALLOWED`: where it
sits is a decision, not a default.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = "qwen_fluent"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: The part of the package that holds ``__version__`` (``qwen_fluent/__init__.py``).
INIT = "__init__"

BOTTOM = frozenset({"forward", "records", "gpu", "stats", "instrument", "logsample"})
EVERYTHING = frozenset({INIT, *BOTTOM, "metrics", "analysis", "server", "client", "pipeline", "stdout", "audit", "reliability", "config", "app", "workers", "cli",
                        "__main__"})

#: Importing part -> the parts it may import (besides itself). Mirrors the module docstring.
ALLOWED: dict[str, frozenset[str]] = {
    INIT: frozenset(),
    **{part: frozenset({INIT}) for part in BOTTOM},
    "metrics": BOTTOM | {INIT},
    "analysis": BOTTOM | {INIT},
    "server": BOTTOM | {INIT, "metrics"},
    "client": BOTTOM | {INIT, "metrics"},
    "pipeline": BOTTOM | {INIT, "metrics"},
    "stdout": BOTTOM | {INIT, "metrics"},
    "audit": BOTTOM | {INIT, "metrics"},
    "reliability": BOTTOM | {INIT, "metrics"},
    "config": BOTTOM | {INIT, "metrics"},
    "app": EVERYTHING - {"cli", "__main__", "workers"},
    "workers": EVERYTHING - {"cli", "__main__"},
    "cli": EVERYTHING,
    "__main__": EVERYTHING,
}

#: Importing part -> (part, name) pairs it may import although the part is not in its row:
#: the app config builds the server's own config dataclass, and needs nothing else of the server.
ALLOWED_NAMES: dict[str, frozenset[tuple[str, str]]] = {
    "config": frozenset({("server", "ServerConfig"), ("reliability", "ReliabilityConfig"), ("audit", "AuditConfig")}),
}

#: Top-level folders of the repository that the installed package must never import.
FORBIDDEN_ROOTS = frozenset({"tests", "bench", "scripts"})


class Violation(NamedTuple):
    """One import that points the wrong way."""

    path: str
    line: int
    statement: str
    target: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` imports {self.target}: {self.why}"


def part_of(dotted: str, parts: frozenset[str]) -> str:
    """The part of ``qwen_fluent`` a dotted name belongs to (``qwen_fluent.metrics.llm`` -> ``metrics``).

    A name directly under ``qwen_fluent`` that is no module or package of it
    (``qwen_fluent.__version__``) is defined in ``qwen_fluent/__init__.py``.
    """
    pieces = dotted.split(".")
    if len(pieces) > 1 and pieces[1] in parts:
        return pieces[1]
    return INIT


def _targets(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """The absolute names an import node brings in, each with the imported name (``from`` imports)."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            base = node.module or ""
        else:
            package = module.split(".") if is_package else module.split(".")[:-1]
            keep = len(package) - (node.level - 1)
            if keep <= 0:
                return [("." * node.level + (node.module or ""), None)]  # beyond the top: flagged below
            base = ".".join(package[:keep] + ([node.module] if node.module else []))
        # `from pkg import name`: name may be a submodule (pkg.name) or an attribute of pkg;
        # pkg.name decides the part either way (part_of falls back to pkg for attributes).
        return [(f"{base}.{alias.name}" if alias.name != "*" else base, alias.name) for alias in node.names]
    if isinstance(node, ast.Call):
        func = node.func
        dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
            isinstance(func, ast.Attribute) and func.attr == "import_module"
        )
        if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return [(node.args[0].value, None)]
    return []


def _shown(part: str) -> str:
    return f"{PACKAGE}.__version__" if part == INIT else part


def check_source(source: str, module: str, *, is_package: bool = False, path: str = "",
                 parts: frozenset[str] = EVERYTHING) -> list[Violation]:
    """Every import in ``source`` (the module ``module`` of the package) that the table forbids."""
    where = path or module
    importer = part_of(module, parts)
    lines = source.splitlines()
    tree = ast.parse(source, filename=where)
    found: list[Violation] = []
    for node in ast.walk(tree):
        for target, name in _targets(node, module, is_package):
            statement = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
            root = target.split(".")[0]
            if target.startswith("."):
                found.append(Violation(where, node.lineno, statement, target, "relative import beyond the package"))
            elif root in FORBIDDEN_ROOTS:
                found.append(Violation(where, node.lineno, statement, target,
                                       f"the installed package must not import {root}/"))
            elif root == PACKAGE:
                if importer not in ALLOWED:
                    found.append(Violation(where, node.lineno, statement, target,
                                           f"{module} is in no floor of ALLOWED in tests/test_layers.py: give it one"))
                    continue
                part = part_of(target, parts)
                if part == importer or part in ALLOWED[importer]:
                    continue
                if name is not None and (part, name) in ALLOWED_NAMES.get(importer, frozenset()):
                    continue
                allowed = [_shown(p) for p in sorted(ALLOWED[importer] - {importer})]
                allowed += [f"{p}.{n}" for p, n in sorted(ALLOWED_NAMES.get(importer, ()))]
                why = f"{importer} may import only {', '.join(allowed)}" if allowed else f"{importer} may import nothing of ours"
                found.append(Violation(where, node.lineno, statement, target, why))
    return found


def package_modules(root: Path = ROOT) -> list[tuple[Path, str, bool]]:
    """Every module file under ``root``: its path, dotted name and whether it is a package's ``__init__``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        pieces = list(rel.parts)
        is_package = pieces[-1] == "__init__"
        if is_package:
            pieces.pop()
        out.append((path, ".".join(pieces), is_package))
    return out


def parts_of(root: Path = ROOT) -> frozenset[str]:
    """The parts of the package on disk: each subpackage and each top-level module."""
    return frozenset(
        p.name if p.is_dir() else p.stem
        for p in root.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")
    )


def check_tree(root: Path = ROOT) -> list[Violation]:
    parts = parts_of(root)
    found: list[Violation] = []
    for path, module, is_package in package_modules(root):
        rel = str(path.relative_to(root.parent))
        found += check_source(path.read_text(encoding="utf-8"), module, is_package=is_package, path=rel, parts=parts)
    return found


# -- the tree -------------------------------------------------------------------


def test_every_import_in_the_package_points_down() -> None:
    violations = check_tree()
    assert not violations, "imports that point up or sideways:\n" + "\n".join(map(str, violations))


def test_every_part_on_disk_has_a_floor() -> None:
    """The table covers the tree as it is, and names nothing that is not there (a stale row hides nothing)."""
    on_disk = parts_of() | {INIT}
    assert on_disk - set(ALLOWED) == set(), f"parts with no floor in ALLOWED: {sorted(on_disk - set(ALLOWED))}"
    assert set(ALLOWED) - on_disk == set(), f"rows in ALLOWED for parts not on disk: {sorted(set(ALLOWED) - on_disk)}"


def test_the_walk_names_every_module_as_python_imports_it() -> None:
    """Each file's dotted name is the one Python's import system finds that file under, so relative
    imports resolve as they do at run time."""
    walked = package_modules()
    assert len(walked) == len(list(ROOT.rglob("*.py")))
    for path, module, is_package in walked:
        spec = importlib.util.find_spec(module)
        assert spec is not None and Path(spec.origin or "").resolve() == path.resolve(), module
        assert (spec.submodule_search_locations is not None) == is_package, module


# -- the checker, on sources that break the rules -----------------------------------


def _one(source: str, module: str, **kwargs: object) -> Violation:
    found = check_source(source, module, **kwargs)  # type: ignore[arg-type]
    assert len(found) == 1, found
    return found[0]


def test_metrics_importing_the_server_is_named_with_its_line() -> None:
    source = '"""Doc."""\n\nfrom __future__ import annotations\n\nfrom ..server.stats import ReceiverStats\n'
    v = _one(source, "qwen_fluent.metrics.receiver", path="qwen_fluent/metrics/receiver.py")
    assert (v.path, v.line, v.target) == ("qwen_fluent/metrics/receiver.py", 5, "qwen_fluent.server.stats.ReceiverStats")
    assert str(v).startswith(
        "qwen_fluent/metrics/receiver.py:5: `from ..server.stats import ReceiverStats` imports qwen_fluent.server"
    )
    assert "metrics may import only" in v.why


def test_a_lazy_import_inside_a_function_counts() -> None:
    source = "import os\n\n\ndef f():\n    if os:\n        from qwen_fluent.metrics import LLMMetrics\n"
    v = _one(source, "qwen_fluent.forward.connection")
    assert v.line == 6 and v.statement == "from qwen_fluent.metrics import LLMMetrics"


def test_a_dynamic_import_with_a_literal_name_counts() -> None:
    source = "import importlib\n\ndef f():\n    return importlib.import_module('qwen_fluent.server.http')\n"
    assert _one(source, "qwen_fluent.metrics.llm").target == "qwen_fluent.server.http"
    assert _one("__import__('qwen_fluent.app')\n", "qwen_fluent.records.vllm").target == "qwen_fluent.app"


def test_the_app_must_not_import_the_cli_but_the_cli_may_import_the_app() -> None:
    v = _one("from .cli.config import AppConfig\n", "qwen_fluent.app")
    assert v.target == "qwen_fluent.cli.config.AppConfig" and "app may import only" in v.why
    assert check_source("from ..app import run\nfrom .. import config\n", "qwen_fluent.cli.main") == []


def test_the_package_must_not_import_the_tests() -> None:
    v = _one("from tests.support.fake_nvml import FakeNvml\n", "qwen_fluent.gpu.collector")
    assert "must not import tests/" in v.why
    # even where the floor allows anything
    assert _one("import tests.support\n", "qwen_fluent.cli.main").target == "tests.support"


def test_the_bottom_floor_may_import_its_own_package_and_the_version_only() -> None:
    ok = "from . import errors\nfrom .errors import GpuError\nfrom qwen_fluent.gpu.reader import NvmlReader\nfrom .. import __version__\n"
    assert check_source(ok, "qwen_fluent.gpu.collector") == []
    assert check_source("from .connection import State\n", "qwen_fluent.forward", is_package=True) == []
    assert _one("from ..records import Normaliser\n", "qwen_fluent.forward.decode").target == "qwen_fluent.records.Normaliser"
    assert _one("from .stats import ReceiverStats\n", "qwen_fluent", is_package=True).why == "__init__ may import nothing of ours"


def test_relative_imports_resolve_from_the_package_of_the_module() -> None:
    # in a package's __init__, "." is the package itself; in a module, its parent
    v = _one("from ..server import ForwardServer\n", "qwen_fluent.metrics", is_package=True)
    assert v.target == "qwen_fluent.server.ForwardServer"
    assert check_source("from ..server import ForwardServer\n", "qwen_fluent.metrics.llm") != []
    assert check_source("from .server import ForwardServer\n", "qwen_fluent.pipeline") != []
    assert _one("from .... import x\n", "qwen_fluent.metrics.llm").why == "relative import beyond the package"


def test_the_app_config_may_take_the_server_config_type_and_nothing_else_of_the_server() -> None:
    assert check_source("from .server import ServerConfig\n", "qwen_fluent.config") == []
    v = _one("from .server import ServerConfig, ForwardServer\n", "qwen_fluent.config")
    assert v.target == "qwen_fluent.server.ForwardServer" and "server.ServerConfig" in v.why


@pytest.mark.parametrize("module", ["qwen_fluent.exporter", "qwen_fluent.newthing.x"])
def test_a_part_with_no_floor_is_a_failure_not_a_pass(module: str) -> None:
    parts = EVERYTHING | {module.split(".")[1]}
    v = _one("from qwen_fluent.forward import Message\n", module, parts=parts)
    assert "in no floor of ALLOWED" in v.why
