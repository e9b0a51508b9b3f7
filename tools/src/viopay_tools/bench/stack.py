"""The stack under test: a backend (embedded SQLite, or a scratch PostgreSQL database plus a Redis
key prefix) and ``viopay serve`` processes on it, started the way users start them."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from viopay.settings import Settings

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_HOST_URL = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"


class StackError(RuntimeError):
    """The stack could not be set up (a service down, a server that would not start)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_up(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- backends ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """Where the server keeps its state; ``env`` is what ``viopay serve`` is started with."""

    name: str  # "embedded" or "postgres"
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    redis_prefix: str | None = None
    # True when Redis is a server of this run's own: its command counts are the server's alone
    redis_private: bool = False

    @property
    def max_workers(self) -> int:
        return 1 if self.name == "embedded" else 64

    def settings(self) -> Settings:
        """The same configuration as the server's, for in-process provisioning and counts."""
        if self.name == "embedded" and "VIOPAY_HSM_MODULE" in self.env:
            return Settings(
                data_dir=self.data_dir,
                database_url=None,
                redis_url=None,
                master_key=None,
                master_key_file=None,
                hsm_module=Path(self.env["VIOPAY_HSM_MODULE"]),
                hsm_token=self.env["VIOPAY_HSM_TOKEN"],
                hsm_pin=SecretStr(self.env["VIOPAY_HSM_PIN"]),
                hsm_key_label=self.env["VIOPAY_HSM_KEY_LABEL"],
                oidc_issuer=None,
            )
        if self.name == "embedded":
            return Settings(
                data_dir=self.data_dir,
                database_url=None,
                redis_url=None,
                master_key=None,
                master_key_file=None,
                oidc_issuer=None,
            )
        if "VIOPAY_HSM_MODULE" in self.env:
            return Settings(
                data_dir=self.data_dir,
                database_url=self.env["VIOPAY_DATABASE_URL"],
                redis_url=self.env["VIOPAY_REDIS_URL"],
                redis_prefix=self.env["VIOPAY_REDIS_PREFIX"],
                master_key=None,
                master_key_file=None,
                hsm_module=Path(self.env["VIOPAY_HSM_MODULE"]),
                hsm_token=self.env["VIOPAY_HSM_TOKEN"],
                hsm_pin=SecretStr(self.env["VIOPAY_HSM_PIN"]),
                hsm_key_label=self.env["VIOPAY_HSM_KEY_LABEL"],
                oidc_issuer=None,
            )
        return Settings(
            data_dir=self.data_dir,
            database_url=self.env["VIOPAY_DATABASE_URL"],
            redis_url=self.env["VIOPAY_REDIS_URL"],
            redis_prefix=self.env["VIOPAY_REDIS_PREFIX"],
            master_key=SecretStr(self.env["VIOPAY_MASTER_KEY"]),
            master_key_file=None,
            oidc_issuer=None,
        )


def _pg(sql: str, *args: Any, database: str = "postgres") -> list[Any]:
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(f"{PG_HOST_URL}/{database}")
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def pg_stats(database: str) -> dict[str, int]:
    """This database's counters from pg_stat_database (transactions, rows, sessions opened).

    Read over a connection to the maintenance database ``postgres``: the reading's own
    transaction is counted there, not in ``database``, so nothing needs subtracting."""
    rows = _pg(
        "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated,"
        " tup_deleted, sessions FROM pg_stat_database WHERE datname = $1",
        database,
    )
    return {k: int(v) for k, v in dict(rows[0]).items()} if rows else {}


# PostgreSQL 15 backends flush their counters to shared memory at most once per second
# (PGSTAT_MIN_INTERVAL) at the end of a transaction; what a backend counted in its last second of
# work stays local until its next transaction a second later, or until its idle timer fires
# (PGSTAT_IDLE_INTERVAL, 10 s). Measured here: after a burst, ~1/3 of 3 s of transactions stayed
# invisible for 9 s, then appeared at once. So a reading is exact only 10 s after the last
# transaction of the server's connections (pg_stat_clear_snapshot() only clears the reader's
# own snapshot, and pg_stat_force_next_flush() only flushes the caller's backend).
PGSTAT_IDLE_INTERVAL_S = 10.0


def pg_stats_settled(database: str, *, quiet_since: float) -> dict[str, int]:
    """``pg_stats`` once every backend that worked until ``quiet_since`` (``time.monotonic()``)
    has flushed: 10 s of idle time (PGSTAT_IDLE_INTERVAL) plus a margin."""
    wait = quiet_since + PGSTAT_IDLE_INTERVAL_S + 0.7 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    return pg_stats(database)


@contextmanager
def pg_busy_connections(database: str, interval: float = 0.1) -> Iterator[dict[str, Any]]:
    """Samples, in a thread, how many of ``database``'s connections are inside a transaction
    (``active`` or ``idle in transaction`` in pg_stat_activity); the dict gets ``max``, ``mean``
    and ``samples`` on exit. A server that holds a connection across a slow processor call shows
    about rate × latency of them."""
    import threading

    import asyncpg

    found: list[int] = []
    stop = threading.Event()

    async def sample() -> None:
        conn = await asyncpg.connect(f"{PG_HOST_URL}/postgres")
        try:
            while not stop.is_set():
                found.append(
                    int(
                        await conn.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                            " AND state IN ('active', 'idle in transaction')",
                            database,
                        )
                    )
                )
                await asyncio.sleep(interval)
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(sample()), daemon=True)
    result: dict[str, Any] = {}
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(timeout=10)
        result |= {
            "max": max(found, default=None),
            "mean": round(sum(found) / len(found), 2) if found else None,
            "samples": len(found),
        }


class RedisCommands:
    """Commands the Redis server executed, summed over ``INFO commandstats``, read over one
    connection kept open between readings (so no connection set-up counts)."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._readings = 0

    def read(self) -> int | None:
        """Calls so far, minus the earlier INFO calls of this counter (Redis counts a command
        after it ran: a reading includes every earlier reading, not itself)."""
        import redis

        try:
            stats = self._client.info("commandstats")
        except redis.RedisError:
            return None
        calls = sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))
        calls -= self._readings
        self._readings += 1
        return calls

    def close(self) -> None:
        self._client.close()


SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)


def softhsm_env(data_dir: Path) -> dict[str, str]:
    """A fresh SoftHSM2 token in ``data_dir`` with a master key on it: the server's HSM
    settings (``--keystore hsm``). SOFTHSM2_CONF is also set for this process."""
    from viopay.crypto.hsm import SessionPool

    util = shutil.which("softhsm2-util")
    module = next((m for m in SOFTHSM_MODULES if Path(m).exists()), None)
    if util is None or module is None:
        raise StackError("--keystore hsm needs SoftHSM2 (apt-get install softhsm2)")
    tokens = data_dir / "softhsm-tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin, token, label = secrets.token_hex(8), f"bench-{secrets.token_hex(3)}", "viopay-master"
    subprocess.run(  # noqa: S603 - softhsm2-util with a fixed argv
        [util, "--init-token", "--free", "--label", token, "--pin", pin, "--so-pin", pin + "s"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pool = SessionPool(module=module, token_label=token, pin=pin)
    try:
        pool.generate(label)
    finally:
        pool.close()
    return {
        "SOFTHSM2_CONF": str(conf),
        "VIOPAY_HSM_MODULE": module,
        "VIOPAY_HSM_TOKEN": token,
        "VIOPAY_HSM_PIN": pin,
        "VIOPAY_HSM_KEY_LABEL": label,
    }


@contextmanager
def backend(name: str, work_dir: Path, *, keystore: str = "file") -> Iterator[Backend]:
    """A fresh backend, removed afterwards (the scratch database and every key of its prefix).
    ``keystore="hsm"``: the master key on a fresh SoftHSM2 token instead of a key."""
    data_dir = work_dir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if name == "embedded":
        env = {"VIOPAY_DATA_DIR": str(data_dir)}
        if keystore == "hsm":
            env |= softhsm_env(data_dir)
        yield Backend(name, data_dir, env)
        return
    if name != "postgres":
        raise StackError(f"unknown backend {name!r}")
    missing = [
        s
        for s, port in (("PostgreSQL", 5432), ("Redis", 6379))
        if not service_up("127.0.0.1", port)
    ]
    if missing:
        raise StackError(
            f"{' and '.join(missing)} not reachable on 127.0.0.1 (bash scripts/services.sh starts them)"
        )
    tag = secrets.token_hex(4)
    database, prefix = f"viopay_bench_{tag}", f"viopay_bench_{tag}:"
    with _private_redis(data_dir) as private_url:
        _pg(f'CREATE DATABASE "{database}"')
        env = {
            "VIOPAY_DATA_DIR": str(data_dir),
            "VIOPAY_DATABASE_URL": f"{PG_HOST_URL}/{database}",
            "VIOPAY_REDIS_URL": private_url or REDIS_URL,
            "VIOPAY_REDIS_PREFIX": prefix,
            "VIOPAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        if keystore == "hsm":
            del env["VIOPAY_MASTER_KEY"]
            env |= softhsm_env(data_dir)
        try:
            yield Backend(
                name,
                data_dir,
                env,
                database=database,
                redis_prefix=prefix,
                redis_private=private_url is not None,
            )
        finally:
            _pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            if private_url is None:
                _drop_redis_prefix(prefix)


@contextmanager
def _private_redis(data_dir: Path) -> Iterator[str | None]:
    """A Redis server of this run's own (same binary, same flags as scripts/services.sh), so
    ``INFO commandstats`` counts only the bench server's commands: the shared one on 6379 also
    serves other sessions. None (use 6379) when redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - redis-server with a fixed argv
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=data_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not service_up("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError("a private redis-server would not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        while batch:
            client.delete(*batch[:1000])
            batch = batch[1000:]
    finally:
        client.close()


# --- server processes ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.exists():
        return found
    for task in task_dir.iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (seconds)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def postgres_cpu_seconds() -> float | None:
    """CPU time of every PostgreSQL process on the machine (backends of other clients too)."""
    total, found = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
        except OSError:
            continue
        value = cpu_seconds(int(entry.name))
        if value is not None:
            total, found = total + value, True
    return total if found else None


@dataclass
class ServerProcess:
    """``viopay serve`` as a subprocess; its JSON log lines go to ``log_path``."""

    backend: Backend
    workers: int
    log_path: Path
    cpus: set[int] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIOPAY_")}
        env |= self.backend.env | self.extra_env
        env |= {
            "VIOPAY_LOG_LEVEL": "info",
            "VIOPAY_LOG_JSON": "true",
            "VIOPAY_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
        }
        command = [
            sys.executable,
            "-m",
            "viopay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        log = self.log_path.open("ab")
        started = time.perf_counter()
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argv: this Python running viopay
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.backend.data_dir
        )
        log.close()
        if self.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self.process.pid, self.cpus)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"viopay serve exited: {self._tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200 and (
                    self.workers == 1 or len(self.worker_pids()) >= self.workers
                ):
                    self.started_in = time.perf_counter() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise StackError(f"viopay serve not ready in {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server itself with one worker, else the
        worker children uvicorn spawned (not multiprocessing's resource tracker)."""
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        return [c for c in _children(self.process.pid) if "resource_tracker" not in _cmdline(c)]

    def memory(self) -> dict[str, Any]:
        """VmHWM per worker (MiB) and of the supervisor with more than one worker."""
        assert self.process is not None
        workers = {pid: vm_hwm_kib(pid) for pid in self.worker_pids()}
        peak = [round(v / 1024, 1) for v in workers.values() if v is not None]
        doc: dict[str, Any] = {
            "worker_vmhwm_mib": peak,
            "max_worker_vmhwm_mib": max(peak, default=None),
        }
        if self.workers > 1:
            sup = vm_hwm_kib(self.process.pid)
            doc["supervisor_vmhwm_mib"] = round(sup / 1024, 1) if sup else None
        return doc

    def cpu(self) -> float:
        """CPU seconds used so far by the worker processes."""
        return sum(cpu_seconds(pid) or 0.0 for pid in self.worker_pids())

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def access_lines(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        """The access log lines (``event: request``) written between two offsets."""
        with self.log_path.open("rb") as log:
            log.seek(start)
            data = log.read() if end is None else log.read(end - start)
        lines = []
        for raw in data.splitlines():
            if not raw.startswith(b"{"):
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("event") == "request":
                lines.append(doc)
        return lines

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def server(
    backend: Backend,
    *,
    workers: int,
    log_path: Path,
    cpus: set[int] | None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    proc = ServerProcess(backend, workers, log_path, cpus, extra_env or {})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
