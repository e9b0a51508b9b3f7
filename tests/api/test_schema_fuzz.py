"""Schema fuzzing (issue 11): schemathesis drives every operation of ``/openapi.json`` on both
backends with a bounded number of generated requests, valid and invalid. No answer is a 5xx,
every answer matches the document, and a request that has every header the document declares
is never refused for a missing one (the document declares every header an operation needs).

Bearer operations get a real token (an operator's for ``/admin``, a merchant owner's with a
session for the rest), so the generated bodies reach the services rather than stopping at 401.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from support.helpers import Admin, Backend, Server

EXAMPLES_PER_OPERATION = 8
CASES: Counter[str] = Counter()


@pytest.fixture(scope="session")
def tokens(admin: Admin, member_client: dict[str, Any], server: Server) -> dict[str, str]:
    """Bearer tokens: the operator's, and a merchant owner's with an initiated session."""
    import httpx

    from support.helpers import client_token

    merchant = admin.merchant(name="Fuzzed Cafe")
    client = admin.client(merchant_id=merchant["merchant_id"], role="owner")
    token = client_token(server.url, client["client_id"], client["client_secret"])
    initiated = httpx.post(
        f"{server.url}/session/initiate",
        json={"merchant_id": merchant["merchant_id"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert initiated.status_code == 201, initiated.text
    return {"admin": admin.token(), "merchant": token}


@pytest.fixture(scope="module", autouse=True)
def report(backend: Backend) -> Iterator[None]:
    yield
    print(f"\nschema fuzzing ({backend.name}): {CASES[backend.name]} generated requests, no 5xx")


def declared_headers_suffice(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request with every header the document marks required is not refused for a missing
    one: the document declares every header the operation needs."""
    if case.meta is not None and "negative" in str(case.meta.generation.mode).lower():
        return None
    if (
        response.status_code == 400
        and "problem+json" in response.headers.get("content-type", [""])[0]
    ):
        body = response.json()
        assert body.get("code") != "missing_header", (
            f"{case.method} {case.path} needs a header its document does not declare: "
            f"{body.get('detail')}"
        )
    return None


def _document() -> dict[str, Any]:
    """The document every server serves at /openapi.json (built without I/O)."""
    import warnings

    from viopay.app import create_app
    from viopay.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document: dict[str, Any] = create_app(Settings()).openapi()
    return document


schema = schemathesis.openapi.from_dict(_document())


def test_the_fuzzed_document_is_the_served_one(api: httpx.Client) -> None:
    assert api.get("/openapi.json").json() == _document()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_within_its_document(
    case: Any, tokens: dict[str, str], backend: Backend, server: Server
) -> None:
    headers: dict[str, str] = {}
    if case.operation.definition.raw.get("security") == [{"bearer": []}]:
        who = "admin" if case.path.startswith("/admin/") else "merchant"
        headers["Authorization"] = f"Bearer {tokens[who]}"
    response = case.call(base_url=server.url, headers=headers, timeout=30)
    CASES[backend.name] += 1
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            response_schema_conformance,
            content_type_conformance,
            schemathesis.check(declared_headers_suffice),
        ],
    )
