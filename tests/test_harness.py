"""The test harness itself: the log scan (log_scan.py) and the start of a server process.

The scan of every log of the run happens once, in the controller after all xdist workers are done
(it fails the run on a leak); these tests check that the scan finds a planted secret, that it
fails a run (with and without xdist), and that a server's log really records its requests.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import helpers
from support.helpers import (
    SEEN_SECRETS,
    Admin,
    Backend,
    MakeMerchant,
    Server,
    signed_pos_headers,
)
from support.log_scan import find_leaks, load_seen, save_seen, scannable

SECRET = "5f0c1e9a7d3b2c4e8f6a"


def test_find_leaks_reports_a_planted_secret_by_its_prefix(tmp_path: Path) -> None:
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text('{"path": "/pos/claim", "status": 200}\n')
    dirty.write_text(f'{{"event": "oops", "secret": "{SECRET}"}}\n')
    assert find_leaks({SECRET, "not-in-any-log"}, [clean]) == []
    assert find_leaks({SECRET, "not-in-any-log"}, [clean, dirty]) == ["5f0c1e…"]
    assert find_leaks({"1234", "200"}, [clean, dirty]) == []  # too short to mean anything
    stamped = tmp_path / "stamped.log"
    stamped.write_text('{"event": "request", "timestamp": "2026-12-04T23:14:16.742746Z"}\n')
    # an all-digit pairing code reads like a timestamp's microseconds: not a leak; a PAN is
    assert find_leaks({"742746", "4242424242424242"}, [stamped]) == []
    stamped.write_text('{"event": "oops", "card": "4242424242424242"}\n')
    assert find_leaks({"742746", "4242424242424242"}, [stamped]) == ["424242…"]
    assert find_leaks({SECRET}, [tmp_path / "never-written.log"]) == []


def test_find_leaks_sees_a_secret_inside_a_longer_token_or_with_other_characters(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    track = "4242424242424242^DOE/JOHN ^3012"  # a space and carets: found the plain way
    log.write_text(f"key=00ff{SECRET}ab.cd {track}\n")
    assert find_leaks({SECRET, track, SECRET + "00"}, [log]) == ["424242…", "5f0c1e…"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(alphabet="ab0=. ^", max_size=60),
    secrets=st.sets(st.text(alphabet="ab0=. ^", min_size=1, max_size=9), max_size=8),
)
def test_find_leaks_finds_what_a_plain_search_finds(
    tmp_path: Path, text: str, secrets: list[str]
) -> None:
    log = tmp_path / "server.log"
    log.write_text(text)
    plain = sorted(s[:6] + "…" for s in secrets if scannable(s) and s in text)
    assert find_leaks(secrets, [log]) == plain


def test_what_each_process_saw_is_merged(tmp_path: Path) -> None:
    save_seen(tmp_path, "gw0", {"a" * 8}, [tmp_path / "a.log"])
    save_seen(tmp_path, "gw1", {"b" * 8}, [tmp_path / "b.log", tmp_path / "a.log"])
    assert load_seen(tmp_path) == ({"a" * 8, "b" * 8}, [tmp_path / "a.log", tmp_path / "b.log"])


RUN_INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
markers = xdist_group: a pytest-xdist group (unknown with -p no:xdist)
"""
RUN_CONFTEST = """
from pathlib import Path

from log_scan import LogScan  # the copy made beside this conftest

SECRETS, LOGS = set(), []


def pytest_configure(config):
    config.pluginmanager.register(LogScan(config, SECRETS, LOGS))
"""
# One test sees the secret, the other writes it to a log; in a different worker under xdist.
RUN_TESTS = """
import pytest
from conftest import LOGS, SECRETS

SECRET = "{secret}"


@pytest.mark.xdist_group("sees")
def test_sees_the_secret():
    SECRETS.add(SECRET)


@pytest.mark.xdist_group("logs")
def test_a_server_logs_it(tmp_path):
    log = tmp_path / "server.log"
    log.write_text('{{"path": "/pos/claim"}}\\n' + {logged!r})
    LOGS.append(log)
"""


ONE_PROCESS, XDIST = ["-p", "no:xdist"], ["-n", "2", "--dist", "loadgroup"]


@pytest.mark.parametrize(
    ("workers", "leak"),
    [(ONE_PROCESS, True), (XDIST, True), (XDIST, False)],
    ids=["one-process-leak", "xdist-leak", "xdist-clean"],
)
def test_a_leak_fails_the_run(pytester: pytest.Pytester, workers: Any, leak: bool) -> None:
    pytester.makepyfile(log_scan=(Path(__file__).parent / "support" / "log_scan.py").read_text())
    pytester.makeconftest(RUN_CONFTEST)
    pytester.makeini(RUN_INI)
    pytester.makepyfile(
        test_run=RUN_TESTS.format(secret=SECRET, logged=SECRET if leak else "nothing")
    )
    result = pytester.runpytest_subprocess(*workers, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    if leak:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(
            ["*log scan FAILED: secrets found in server logs: ?'5f0c1e…'?*"]
        )
        assert SECRET not in result.stdout.str()
    else:
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(["log scan: none of 1 secrets in 1 server logs (*s)"])


def test_server_log_records_requests_and_no_secret(
    server: Server, admin: Admin, make_merchant: MakeMerchant
) -> None:
    device = admin.provision()
    code = httpx.post(f"{server.url}/pos/pairing-code", headers=signed_pos_headers(device)).json()[
        "pairing_code"
    ]
    SEEN_SECRETS.add(code)
    assert make_merchant().http.post("/pos/claim", json={"pairing_code": code}).status_code == 200
    # The access line is written once the answer is sent: give the server a moment to write it.
    for _ in range(100):
        if '"path": "/pos/claim"' in server.log_path.read_text(errors="replace"):
            break
        threading.Event().wait(0.05)
    assert '"path": "/pos/claim"' in server.log_path.read_text(errors="replace")
    assert find_leaks(SEEN_SECRETS, [server.log_path]) == []


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_whose_port_is_taken_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process took the port and even answers /readyz: the server must not be fooled.
    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    taken = squatter.server_address[1]
    ports, free_port = iter([taken]), helpers.free_port
    monkeypatch.setattr(helpers, "free_port", lambda: next(ports, None) or free_port())
    env = {"VIOPAY_DATA_DIR": str(tmp_path / "data")}
    server = Server(Backend("embedded", env), tmp_path, "clash")
    try:
        assert server.port != taken
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert server.process.poll() is None
    finally:
        server.stop()
        squatter.shutdown()
        squatter.server_close()
