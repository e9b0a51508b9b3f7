"""Known-answer vectors from shared/spec/vectors, parametrized into tests by fixture name.

A test asking for ``attest_vector`` runs once per case of attest_signature.json, and so on.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest

VECTOR_FILES: dict[str, str] = {
    "attest_vector": "attest_signature.json",
    "charge_vector": "charge_signature.json",
    "kcv_vector": "kcv.json",
    "transport_vector": "key_transport.json",
    "envelope_vector": "envelope.json",
    "pin_vector": "pin_block.json",
    "webhook_vector": "webhook_signature.json",
}


def vectors_dir() -> Path:
    default = Path(__file__).resolve().parents[3] / "shared" / "spec" / "vectors"
    if default.is_dir():
        return default
    spec_dir = os.environ.get("VIOPAY_SPEC_DIR")
    if spec_dir:
        return Path(spec_dir) / "vectors"
    copy = Path(__file__).resolve().parents[1] / "vectors"  # committed copy, see its README
    if copy.is_dir():
        return copy
    raise RuntimeError(f"no vectors at {default}; set VIOPAY_SPEC_DIR to the spec directory")


def load_cases(file_name: str) -> list[dict[str, Any]]:
    data = json.loads((vectors_dir() / file_name).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "cases" in data:  # shared members beside a list of cases
        shared = {k: v for k, v in data.items() if k != "cases"}
        cases = [shared | case for case in data["cases"]]
    else:
        cases = data if isinstance(data, list) else [data]
    assert cases, f"{file_name} holds no vectors"
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture_name, file_name in VECTOR_FILES.items():
        if fixture_name in metafunc.fixturenames:
            cases = load_cases(file_name)
            ids = [f"{file_name}[{i}]" for i in range(len(cases))]
            metafunc.parametrize(fixture_name, cases, ids=ids)


@pytest.fixture
def spec_vectors_dir() -> Path:
    return vectors_dir()


@pytest.fixture
def vector_files() -> dict[str, str]:
    return dict(VECTOR_FILES)
