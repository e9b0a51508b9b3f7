"""No test reads the clock at import or collection time.

A value such as ``int(time.time()) + 600`` in a ``parametrize`` list or a module-level constant is
computed when pytest collects the module; on a loaded machine the test may run many minutes
later, when the value no longer means what it meant (the CI issue's ``nbf`` failure). Clock reads
belong inside the test or a fixture. This check walks every test module's syntax tree and fails on
a clock call evaluated at import: in a decorator, a default argument, a module- or class-level
statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# Attribute calls (``time.time()``, ``datetime.now(UTC)``) and bare names imported from modules.
CLOCK_ATTRS = {"time", "monotonic", "perf_counter", "now", "utcnow", "today", "time_ns"}
CLOCK_NAMES = {"utcnow"}


def _clock_calls(node: ast.AST) -> list[int]:
    lines = []
    for sub in ast.walk(node):
        if not isinstance(sub, ast.Call):
            continue
        func = sub.func
        if isinstance(func, ast.Attribute) and func.attr in CLOCK_ATTRS:
            lines.append(sub.lineno)
        elif isinstance(func, ast.Name) and func.id in CLOCK_NAMES:
            lines.append(sub.lineno)
    return lines


def _import_time_nodes(tree: ast.Module) -> list[ast.AST]:
    """The expressions Python evaluates when the module is imported."""
    found: list[ast.AST] = []

    def visit_body(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                found.extend(stmt.decorator_list)
                found.extend(stmt.args.defaults)
                found.extend(d for d in stmt.args.kw_defaults if d is not None)
            elif isinstance(stmt, ast.ClassDef):
                found.extend(stmt.decorator_list)
                visit_body(stmt.body)
            elif not isinstance(stmt, ast.Import | ast.ImportFrom):
                found.append(stmt)

    visit_body(tree.body)
    return found


def offenders(source: str) -> list[int]:
    tree = ast.parse(source)
    return sorted({line for node in _import_time_nodes(tree) for line in _clock_calls(node)})


def test_no_test_module_reads_the_clock_at_import() -> None:
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for line in offenders(path.read_text()):
            bad.append(f"{path.relative_to(TESTS)}:{line}")
    assert not bad, (
        "clock read at import/collection (move it into the test or a fixture): " + ", ".join(bad)
    )


@pytest.mark.parametrize(
    "source",
    [
        "import time, pytest\n@pytest.mark.parametrize('x', [int(time.time()) + 600])\ndef test(x): pass\n",
        "from datetime import datetime, UTC\nEXPIRED = datetime.now(UTC)\n",
        "from viopay.ids import utcnow\ndef f(now=utcnow()): pass\n",
        "import time\nclass T:\n    stamp = time.monotonic()\n",
    ],
)
def test_the_check_catches_each_form(source: str) -> None:
    assert offenders(source)


def test_the_check_allows_clock_reads_inside_tests() -> None:
    assert not offenders("import time\ndef test():\n    assert time.time() > 0\n")
