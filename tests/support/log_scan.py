"""The log scan: no server process of the run wrote a secret the tests saw into its log.

The tests register every secret they meet (identity and client secrets, tokens, keys, PANs, track
data, PIN blocks) in ``support.helpers.SEEN_SECRETS`` and every server log in ``support.helpers.SERVER_LOGS``.
Under pytest-xdist each worker process has its own copies, so no test can see them all. Instead
every process of the run writes what it saw to a run folder when its session ends, and the
controller (the process that started the run, the only one without xdist) scans every log for
every secret once all workers are done. A leak fails the run, whatever order the tests ran in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

RUN_DIR_ENV = "VIOPAY_TEST_RUN_DIR"
# Shorter values (a PIN, a two-digit expiry) would match unrelated text in a log.
MIN_LENGTH = 6
# Secrets are tokens (hex, base64, JWTs, pairing codes, PANs, tracks): each lies inside one run of
# these characters in a log. Looking them up in the distinct runs (under a megabyte for the
# ~100 MB of debug logs of a run) takes a second; searching the whole text once per secret (the
# plain way, still used for a secret with other characters) takes minutes with thousands.
TOKEN_CHARS = r"A-Za-z0-9_\-+/=.:~"
TOKEN = re.compile(f"[{TOKEN_CHARS}]+")
TOKEN_RUN = re.compile(f"[{TOKEN_CHARS}]{{{MIN_LENGTH},}}")


def scannable(secret: str) -> bool:
    """A secret the scan can tell from ordinary log text: at least 6 characters, and not a
    short run of digits. A pairing code drawn from the digits 2–9 alone (about one code in
    3 400) reads like part of a hex request id or a timestamp's microseconds: a CI run reported
    ``742746`` found in ``"request_id": "fc2d…5a742746"``. PANs (12–19 digits) are still
    scanned; a code with a letter (upper case) never matches lower-case hex."""
    return len(secret) >= MIN_LENGTH and not (secret.isdigit() and len(secret) < 12)


def find_leaks(secrets: Iterable[str], logs: Iterable[Path]) -> list[str]:
    """The secrets (their first 6 characters, never the whole) found in any of ``logs``."""
    text = "\n".join(path.read_text(errors="replace") for path in logs if path.exists())
    wanted = {secret for secret in secrets if scannable(secret)}
    tokens = {secret for secret in wanted if TOKEN.fullmatch(secret)}
    found = _tokens_in(tokens, text) | {secret for secret in wanted - tokens if secret in text}
    return sorted(secret[:6] + "…" for secret in found)


def _tokens_in(tokens: set[str], text: str) -> set[str]:
    by_prefix: dict[str, list[str]] = {}
    for token in tokens:
        by_prefix.setdefault(token[:MIN_LENGTH], []).append(token)
    found: set[str] = set()
    for run in set(TOKEN_RUN.findall(text)):
        for start in range(len(run) - MIN_LENGTH + 1):
            for token in by_prefix.get(run[start : start + MIN_LENGTH], ()):
                if run.startswith(token, start):
                    found.add(token)
    return found


def save_seen(run_dir: Path, process: str, secrets: Iterable[str], logs: Iterable[Path]) -> None:
    document = {"secrets": sorted(secrets), "logs": [str(path) for path in logs]}
    (run_dir / f"{process}.json").write_text(json.dumps(document))


def load_seen(run_dir: Path) -> tuple[set[str], list[Path]]:
    """The union of what every process of the run saved."""
    secrets: set[str] = set()
    logs: list[Path] = []
    for saved in sorted(run_dir.glob("*.json")):
        document = json.loads(saved.read_text())
        secrets.update(document["secrets"])
        logs.extend(Path(path) for path in document["logs"] if Path(path) not in logs)
    return secrets, logs


class LogScan:
    """The pytest plugin; conftest.py registers it with the collections the helpers fill."""

    def __init__(self, config: pytest.Config, secrets: set[str], logs: list[Path]) -> None:
        self.secrets, self.logs = secrets, logs
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.controller = workerinput is None
        self.process = "controller" if workerinput is None else str(workerinput["workerid"])
        self.scanned: tuple[int, int, float, list[str]] | None = None
        self._previous = os.environ.get(RUN_DIR_ENV)
        if self.controller:
            # xdist starts its workers after pytest_configure: they inherit the variable.
            self.run_dir = Path(tempfile.mkdtemp(prefix="viopay-test-run-"))
            os.environ[RUN_DIR_ENV] = str(self.run_dir)
        else:
            self.run_dir = Path(os.environ[RUN_DIR_ENV])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # In a worker this runs after its session fixtures stopped their servers (so every log
        # is complete) and before xdist tells the controller the worker is done.
        save_seen(self.run_dir, self.process, self.secrets, self.logs)
        if not self.controller:
            return
        secrets, logs = load_seen(self.run_dir)
        if not logs:
            return
        started = time.monotonic()
        leaks = find_leaks(secrets, logs)
        self.scanned = (len(secrets), len(logs), time.monotonic() - started, leaks)
        if leaks and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.scanned is None:
            return
        secrets, logs, seconds, leaks = self.scanned
        if leaks:
            terminalreporter.write_sep(
                "=", f"log scan FAILED: secrets found in server logs: {leaks}", red=True
            )
        else:
            terminalreporter.write_line(
                f"log scan: none of {secrets} secrets in {logs} server logs ({seconds:.1f} s)"
            )

    def pytest_unconfigure(self) -> None:
        if not self.controller:
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = self._previous
