"""Known-answer vectors from docs/vectors (the spec's worked examples), parametrized into tests by fixture name.

A test asking for ``attest_vector`` runs once per case of attest_signature.json, and so on.
"""

import json
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
    """The repository's copy beside docs/protocol.md (tests/test_protocol_copy.py keeps it equal
    to the spec's own folder whenever ``../shared`` is there)."""
    return Path(__file__).resolve().parents[2] / "docs" / "vectors"


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
