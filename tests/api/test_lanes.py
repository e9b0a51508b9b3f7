"""The lanes (viopay.api.lanes): ``POST /pos/charge``, ``/pos/heartbeat``,
``/pos/terminal-parameters``, ``/pos/bootstrap``, ``/pos/pairing-code`` and ``GET /pos/status``
are served
without FastAPI's dependency solving, and answer exactly as their routes do, good requests and
bad alike; an app whose lane no longer matches its route's authentication does not start.
(Every other charge and heartbeat test of the suite goes through the lanes too.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import fastapi.dependencies.utils
import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from support import charge_kit as kit
from support.helpers import pos_headers, signed_pos_headers
from viopay.api.lanes import LANES, Lane, LaneError, LaneMiddleware, mount_lanes
from viopay.app import create_app
from viopay.devices.authn import pairing_headers
from viopay.payments.router import create_charge
from viopay.runtime import Runtime
from viopay.settings import Settings

CHARGE, HEARTBEAT, CHUNKS = "/pos/charge", "/pos/heartbeat", "/pos/terminal-parameters"
STATUS, BOOTSTRAP, PAIRING = "/pos/status", "/pos/bootstrap", "/pos/pairing-code"
# A device id no test provisions (schema fuzzing may provision the all-zero one).
NO_DEVICE = "POS-7E57F404"
OLD_UA = "Viopay-POS/0.1.0 (Android 12; PAX-A920)"


def requests(pos: kit.PosTerminal) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, path, body, headers): built afresh for each app, so no nonce is spent twice."""

    def signed(path: str, plaintext: Any, **options: Any) -> tuple[bytes, dict[str, str]]:
        body = plaintext if isinstance(plaintext, bytes) else pos.seal_body("POST", path, plaintext)
        return body, pos.headers("POST", path, body, **options)

    key = kit.new_nonce()
    charge_body, charge_headers = signed(CHARGE, pos.charge_plaintext(), idempotency_key=key)
    beat_body, beat_headers = signed(HEARTBEAT, {"battery_pct": 51})
    cases = [
        ("charge", CHARGE, charge_body, charge_headers),
        ("its replay", CHARGE, *signed(CHARGE, charge_body, idempotency_key=key)),
        ("heartbeat", HEARTBEAT, beat_body, beat_headers),
        ("the heartbeat's nonce again", HEARTBEAT, beat_body, beat_headers),
    ]
    for path in (CHARGE, HEARTBEAT):
        body, headers = signed(path, {"amount": 1250, "battery_pct": 5}, idempotency_key=key)
        cases += [
            (f"{path} without headers", path, body, {"Content-Type": "application/json"}),
            (f"{path} from an old app", path, body, {**headers, "User-Agent": OLD_UA}),
            (f"{path} as text", path, body, {**headers, "Content-Type": "text/plain"}),
            (f"{path} signed for another nonce", path, body, {**headers, "X-Nonce": "n" * 16}),
            (f"{path} badly signed", path, *signed(path, b"{}", mac=bytes(32))),
            (f"{path} unknown terminal", path, *signed(path, b"{}", terminal_id="tm_nope")),
            (f"{path} not an envelope", path, *signed(path, b'{"amount": 1}')),
            (f"{path} not JSON", path, *signed(path, b"\xff{")),
        ]
    token = {"Authorization": "Bearer not-a-token", "X-Device-Id": pos.device.device_id}
    cases += [
        ("chunk without a token", CHUNKS, b'{"chunk": 0}', {"X-Device-Id": pos.device.device_id}),
        ("chunk with a bad token", CHUNKS, b'{"chunk": 0}', token),
        ("chunk without a device", CHUNKS, b"{}", {"Authorization": token["Authorization"]}),
        ("chunk not JSON", CHUNKS, b"\xff{", token),
    ]
    status = signed_pos_headers(pos.device)  # an activated device: quick on PostgreSQL
    cases += [
        ("status", STATUS, b"", status),
        ("the status's nonce again", STATUS, b"", status),
        ("status badly signed", STATUS, b"", signed_pos_headers(pos.device, secret=bytes(32))),
        ("status from an old app", STATUS, b"", signed_pos_headers(pos.device, ua=OLD_UA)),
        ("status without a signature", STATUS, b"", pos_headers(pos.device.device_id)),
        ("status of no device", STATUS, b"", {**status, "X-Device-Id": NO_DEVICE}),
        ("bootstrap", BOOTSTRAP, b"", pos_headers(pos.device.device_id)),
        ("bootstrap from an old app", BOOTSTRAP, b"", pos_headers(pos.device.device_id, ua=OLD_UA)),
        ("bootstrap of no device", BOOTSTRAP, b"", pos_headers(NO_DEVICE)),
        ("bootstrap without headers", BOOTSTRAP, b"", {}),
        ("a code for an activated device", PAIRING, b"", signed_pos_headers(pos.device)),
        ("a code badly signed", PAIRING, b"", signed_pos_headers(pos.device, secret=bytes(32))),
    ]
    return cases


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """What must match between a lane and its route: the status, the media type, the
    replay header and a problem's members (its request id and instance differ)."""
    seen: dict[str, Any] = {
        "status": response.status_code,
        "content-type": response.headers.get("content-type"),
        "replayed": response.headers.get("idempotent-replayed"),
    }
    if seen["content-type"] == "application/problem+json":
        problem = orjson.loads(response.content)
        seen |= {k: v for k, v in problem.items() if k not in ("instance", "request_id")}
    return seen


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://viopay.test") as http,
    ):
        yield http


def without_lanes(app: FastAPI) -> FastAPI:
    """The app as it would be without its lanes (the stack is built at the first request)."""
    app.user_middleware = [
        m for m in app.user_middleware if getattr(m, "cls", None) is not LaneMiddleware
    ]
    return app


# app.py's default ORJSONResponse warns in-process (the servers run with default filters).
@pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")
async def test_a_lane_answers_as_its_route_without_solving_dependencies(
    terminal: kit.PosTerminal, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    original: Callable[..., Any] = fastapi.dependencies.utils.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr("fastapi.routing.solve_dependencies", counting)  # as routing calls it
    labels = {"method": "POST", "route": CHARGE, "status": "201"}
    created = REGISTRY.get_sample_value("viopay_http_requests_total", labels) or 0.0
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    for name, app in (
        ("lanes", create_app(runtime.settings)),
        ("routes", without_lanes(create_app(runtime.settings))),
    ):
        solved.clear()
        async with serving(app) as http:
            answers[name] = {}
            for case, path, body, headers in requests(terminal):
                if path == STATUS:
                    response = await http.get(path, headers=headers)
                else:
                    response = await http.post(path, content=body, headers=headers)
                answers[name][case] = answer_of(response)
            control = await http.get(f"{CHARGE}/ch_nope")  # a route: solved by FastAPI
        assert control.status_code in (400, 401), control.text
        if name == "lanes":
            assert solved == [f"{CHARGE}/ch_nope"], "a lane's request went through FastAPI"
        else:
            assert len(solved) == len(answers[name]) + 1
    assert answers["lanes"] == answers["routes"]
    # the metrics name a lane's route by its template, as FastAPI's scope["route"] does
    assert REGISTRY.get_sample_value("viopay_http_requests_total", labels) == created + 2
    statuses = {case: seen["status"] for case, seen in answers["lanes"].items()}
    assert statuses["charge"] == 201 and statuses["heartbeat"] == 200, statuses
    assert statuses["its replay"] == 200 and answers["lanes"]["its replay"]["replayed"] == "true"
    assert {statuses[f"{CHARGE} from an old app"], statuses[f"{HEARTBEAT} from an old app"]} == {
        426
    }
    assert statuses["the heartbeat's nonce again"] == 401
    assert statuses["status"] == 200 and statuses["the status's nonce again"] == 401
    assert statuses["bootstrap"] == statuses["bootstrap from an old app"] == 200
    assert statuses["a code for an activated device"] == 409
    good = ("charge", "its replay", "heartbeat", "status", "bootstrap", "bootstrap from an old app")
    bad = [s for case, s in statuses.items() if case not in good]
    assert bad and all(400 <= s < 500 for s in bad), statuses


def test_the_lanes_are_the_hot_device_routes() -> None:
    app = create_app(Settings())
    lane_mw = next(m for m in app.user_middleware if getattr(m, "cls", None) is LaneMiddleware)
    lanes = cast(dict[tuple[str, str], Any], lane_mw.kwargs["lanes"])
    assert set(lanes) == {
        ("POST", CHARGE),
        ("POST", HEARTBEAT),
        ("POST", CHUNKS),
        ("GET", STATUS),
        ("POST", BOOTSTRAP),
        ("POST", PAIRING),
    }
    assert getattr(app.user_middleware[-1], "cls", None) is LaneMiddleware  # inside the context
    assert len(LANES) == 6


def test_a_lane_whose_route_changed_authentication_does_not_start() -> None:
    app = create_app(Settings())
    with pytest.raises(LaneError, match="/pos/charge: authenticated by"):
        mount_lanes(app, (Lane(create_charge, pairing_headers, LANES[0].serve),))
    with pytest.raises(LaneError, match="not mounted once"):
        mount_lanes(app, (Lane(kit.new_nonce, pairing_headers, LANES[0].serve),))


async def test_a_lane_leaves_what_no_handler_nearer_than_exception_takes_to_the_server() -> None:
    """As from a route: a handler registered for ``Exception`` is not the lane's to use (the
    request context turns a too-large body into 413, anything else into 500)."""

    class TooLarge(Exception):
        pass

    async def raising(request: Any) -> Any:
        raise TooLarge

    async def handled(request: Any, exc: Exception) -> Any:
        raise AssertionError("the Exception handler was used by the lane")

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a lane's request reached the app")

    lanes: Any = {("POST", CHARGE): (None, raising)}
    lane = LaneMiddleware(inner, lanes=lanes, handlers={Exception: handled})
    scope = {"type": "http", "method": "POST", "path": CHARGE, "root_path": "", "headers": []}
    with pytest.raises(TooLarge):
        await lane(scope, cast(Any, None), cast(Any, None))
