"""The layers of ``src/viopay`` (docs/architecture.md), read from the imports of every module.

- The base (settings, db, cache, errors, crypto, ids, metrics, …) imports no domain package.
- No import cycle between packages (an import inside ``if TYPE_CHECKING:`` runs at type-check
  time only and is not an edge).
- The device SDK (``viopay_device``) imports nothing of the server but the crypto base.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "viopay"

BASE = {
    "settings",
    "db",
    "cache",
    "errors",
    "crypto",
    "ids",
    "metrics",
    "pagination",
    "middleware",
    "openapi",
    "observability",
    "signatures",
    "migrate",
    "audit",
    "bodies",
    "money",
    "stalls",
    "__init__",
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, root: Path = SRC) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "viopay":  # a module of the package, or a name of its root
                found.extend(
                    f"viopay.{a.name}"
                    if (root / f"{a.name}.py").exists() or (root / a.name).is_dir()
                    else "viopay.__init__"
                    for a in node.names
                )
            elif node.module.startswith("viopay."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("viopay."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def package_graph(root: Path = SRC) -> dict[str, dict[str, set[str]]]:
    """package → imported package → the files that import it."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in root.rglob("*.py"):
        source = path.relative_to(root).parts[0].removesuffix(".py")
        for module in _imports(ast.parse(path.read_text()), root):
            target = module.split(".")[1]
            if target != source:
                graph[source][target].add(str(path.relative_to(root)))
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                strong(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            strong(node)
    return found


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    found = cycles(graph)
    detail = [
        {a: {b: sorted(graph[a][b]) for b in graph[a] if b in component} for a in component}
        for component in found
    ]
    assert not found, f"import cycles between packages: {detail}"


def test_the_base_imports_no_domain() -> None:
    graph = package_graph()
    leaks = {
        base: {dep: sorted(files) for dep, files in graph[base].items() if dep not in BASE}
        for base in BASE
        if base in graph
    }
    leaks = {base: deps for base, deps in leaks.items() if deps}
    assert not leaks, f"base modules importing a domain: {leaks}"


SDK = SRC.parents[1] / "sdk"
SDK_DEPENDENCIES = {"httpx", "cryptography", "psec"}


def test_the_device_sdk_imports_no_server_code_and_only_its_dependencies() -> None:
    imported: set[str] = set()
    for path in (SDK / "src" / "viopay_device").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    assert third_party <= SDK_DEPENDENCIES | {"viopay_device"}, third_party
    assert "viopay" not in imported


def test_the_sdk_installs_alone_into_a_fresh_venv(tmp_path: Path) -> None:
    """``pip install ./sdk`` pulls no server dependency (uv's pip, for its cache)."""
    uv = SRC.parents[1] / ".venv" / "bin" / "uv"
    venv = tmp_path / "venv"
    subprocess.run([str(uv), "venv", "-q", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), str(SDK)], check=True)
    probe = (
        "import importlib.util, viopay_device; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'asyncpg', 'redis', 'viopay') "
        "if importlib.util.find_spec(m)))"
    )
    done = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a/x.py": "from viopay.b import y\n", "b/y.py": "from viopay.a import x\n"},
            [["a", "b"]],
        ),
        (
            {
                "a/x.py": "from viopay.b import y\n",
                "b/y.py": "import viopay.c.z\n",
                "c/z.py": "from viopay import a\n",
            },
            [["a", "b", "c"]],
        ),
        (
            {
                "a/x.py": "from viopay.b import y\n",
                "b/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from viopay.a import x\n",
            },
            [],
        ),
    ],
)
def test_the_cycle_check_finds_cycles(
    tmp_path: Path, files: dict[str, str], expected: list[Any]
) -> None:
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    assert cycles(package_graph(tmp_path)) == expected


def test_the_server_package_holds_no_sdk_benchmark_or_demo() -> None:
    shipped = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    assert not {p for p in shipped if p.split("/")[0] in ("device", "bench") or "demo" in p}
    assert (SRC.parents[1] / "tools" / "src" / "viopay_tools" / "bench").is_dir()


FACES = ("portal", "cli")


def _imported_names(tree: ast.AST) -> list[str]:
    """Every module a file imports, ``from a import b`` counted as ``a`` and ``a.b``."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def _route_module(module: str) -> bool:
    """The API's routes: the ``viopay.api`` package and every domain's ``router`` module."""
    return module == "viopay.api" or module.startswith("viopay.api.") or module.endswith(".router")


def test_the_portal_and_the_cli_call_services_not_the_apis_routes() -> None:
    """The portal, the API and the CLI are three faces of the same services (CONVENTIONS)."""
    found = {
        str(path.relative_to(SRC)): sorted(
            m for m in _imported_names(ast.parse(path.read_text())) if _route_module(m)
        )
        for face in FACES
        for path in (SRC / face).rglob("*.py")
    }
    found = {path: modules for path, modules in found.items() if modules}
    assert not found, f"route modules imported by the portal or the CLI: {found}"


def test_the_route_rule_sees_every_form_of_a_route_import() -> None:
    source = (
        "from viopay.api import devices\n"
        "from viopay.payments import router\n"
        "import viopay.auth.router\n"
        "from viopay.payments import listing\n"
    )
    imported = [m for m in _imported_names(ast.parse(source)) if _route_module(m)]
    assert imported == [
        "viopay.api",
        "viopay.api.devices",
        "viopay.payments.router",
        "viopay.auth.router",
    ]


def test_a_name_of_the_package_root_is_an_import_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("from viopay import __version__, b\n")
    (tmp_path / "b.py").write_text("")
    graph = package_graph(tmp_path)
    assert {dep: sorted(files) for dep, files in graph["a"].items()} == {
        "__init__": ["a/x.py"],
        "b": ["a/x.py"],
    }
