"""``viopay-tools bench``: one run on this machine, from a fresh stack to the report.

For each backend: a fresh stack, ``viopay serve`` with 1 worker (and with 2 on PostgreSQL + Redis),
then, under the same load generator:

1. activation of N terminals through the SDK (server time per step from the access log);
2. the ceiling: ``GET /healthz`` of the same app and server, closed loop;
3. the charge path: a short probe, the peak (closed loop), then fixed offered loads (open loop)
   at 25/50/70/100 % of that peak; every request built beforehand;
4. peak memory (VmHWM) of each worker, and, per charge of the peak phase, measured: worker CPU
   (``/proc/<pid>/stat``), PostgreSQL transactions and rows (``pg_stat_database``, read once
   the backends have flushed) and Redis commands (``INFO commandstats`` of a Redis server of
   the run's own);
5. with ``--sandbox-latency-ms N``: a second server started with ``VIOPAY_SANDBOX_LATENCY_MS=N``
   and a closed-loop charge phase with enough connections to keep its peak rate in flight;
6. after each backend, the duplicate check: charges stored against Idempotency-Keys sent.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from viopay import __version__
from viopay_tools.bench import fleet, stack
from viopay_tools.bench import profile as profiling
from viopay_tools.bench.loadgen import build_request, percentiles, write_plan

LOADS = (0.25, 0.50, 0.70, 1.00)


@dataclass(frozen=True)
class Preset:
    devices: int
    warmup: float
    ceiling_s: float
    probe_s: float
    peak_s: float
    load_s: float
    generator_s: float
    wrk_s: float  # 0: no wrk cross-check
    profile_s: float
    #: Settings of the servers it starts: a smoke run measures nothing, and its servers share
    #: PostgreSQL's connections with the test suite's (tools/tests), so it keeps their pools small.
    server_env: dict[str, str] = field(default_factory=dict)


PRESETS = {
    "full": Preset(
        devices=100,
        warmup=2,
        ceiling_s=10,
        probe_s=3,
        peak_s=15,
        load_s=15,
        generator_s=5,
        wrk_s=10,
        profile_s=10,
    ),
    "quick": Preset(
        devices=25,
        warmup=0.5,
        ceiling_s=2.5,
        probe_s=1,
        peak_s=3.5,
        load_s=2.5,
        generator_s=1.5,
        wrk_s=0,
        profile_s=5,
    ),
    "smoke": Preset(
        devices=2,
        warmup=0.1,
        ceiling_s=0.5,
        probe_s=0.3,
        peak_s=0.8,
        load_s=0.5,
        generator_s=0.3,
        wrk_s=0,
        profile_s=2,
        server_env={"VIOPAY_DB_POOL_SIZE": "3"},
    ),
}


@dataclass
class Options:
    backends: list[str]
    mode: str = "full"  # full, quick or smoke
    workers: list[int] = field(default_factory=lambda: [1, 2])
    devices: int | None = None
    connections: int = 32
    activation_threads: int = 1
    profile: bool = False
    pin: bool = True
    out_dir: Path = Path("bench-results")
    sandbox_latency_ms: int | None = None  # also run the charge phase with a slowed sandbox
    keystore: str = "file"  # or "hsm": the master key on a fresh SoftHSM2 token
    server_env: dict[str, str] = field(default_factory=dict)  # VIOPAY_* settings for every server

    def env(self) -> dict[str, str]:
        """The servers' extra environment: the preset's, then the operator's ``--server-env``."""
        return self.preset.server_env | self.server_env

    @property
    def preset(self) -> Preset:
        return PRESETS[self.mode]


Say = Callable[[str], None]


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import sqlalchemy
    import uvicorn

    return {
        "cpus": stack.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "uvicorn": uvicorn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "viopay": __version__,
    }


class Phases:
    """Runs load phases in a child process (pinned to ``cpu``), one plan file each."""

    def __init__(self, work_dir: Path, cpu: int | None, connections: int) -> None:
        self.work_dir = work_dir
        self.cpu = cpu
        self.connections = connections
        self.count = 0

    def run(
        self,
        port: int,
        requests: list[bytes],
        *,
        mode: str,
        duration: float,
        warmup: float = 0,
        rate: float | None = None,
        cycle: bool = False,
        expect: int = 200,
        connections: int | None = None,
    ) -> dict[str, Any]:
        self.count += 1
        plan = self.work_dir / f"phase-{self.count}.plan"
        config_path = self.work_dir / f"phase-{self.count}.json"
        out = self.work_dir / f"phase-{self.count}.result.json"
        write_plan(plan, requests)
        config = {
            "host": "127.0.0.1",
            "port": port,
            "connections": connections or self.connections,
            "mode": mode,
            "duration": duration,
            "warmup": warmup,
            "rate": rate,
            "cycle": cycle,
            "expect": expect,
            "plan": str(plan),
            "cpu": self.cpu,
            "out": str(out),
            "drain_timeout": max(10.0, duration),
            # Each connection answers a GET /healthz before the next one opens (see loadgen).
            "warm": build_request("GET", "/healthz", host=f"127.0.0.1:{port}").decode("latin-1"),
        }
        config_path.write_bytes(orjson.dumps(config))
        limit = warmup + duration + max(10.0, duration) + 60
        done = subprocess.run(  # noqa: S603 - a fixed argv: this Python
            [sys.executable, "-m", "viopay_tools.bench.loadgen", str(config_path)],
            capture_output=True,
            timeout=limit,
            check=False,
        )
        plan.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"load generator failed: {done.stderr.decode(errors='replace')[-2000:]}"
            )
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result


def generator_ceiling(phases: Phases, seconds: float, server_cpu: int | None) -> dict[str, Any]:
    """The generator against a trivial responder on the other core: its own ceiling."""
    port = stack.free_port()
    args = [sys.executable, "-m", "viopay_tools.bench.nullserver", str(port)]
    if server_cpu is not None:
        args.append(str(server_cpu))
    responder = subprocess.Popen(  # noqa: S603 - a fixed argv: this Python
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert responder.stdout is not None
        responder.stdout.readline()
        request = build_request("GET", "/healthz", host=f"127.0.0.1:{port}")
        result = phases.run(
            port, [request], mode="closed", duration=seconds, warmup=0.2, cycle=True
        )
    finally:
        responder.terminate()
        responder.wait(timeout=10)
    return {
        "rps": result["rps"],
        "generator_cpu_util": result["generator_cpu_util"],
        "latency_ms": result["latency_ms"],
        "errors": result["errors"],
    }


def wrk_healthz(
    url: str, seconds: float, connections: int, cpu: int | None
) -> dict[str, Any] | None:
    """The same ceiling measured by wrk, when it is installed (a cross-check of the generator)."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    command = [exe, "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", f"{url}/healthz"]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(  # noqa: S603 - wrk with a fixed argv
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return {"rps": float(line.split()[1]), "connections": connections}
    return None


@dataclass
class ChargeLedger:
    """What the charge phases of one backend sent and got, for the duplicate check."""

    keys_sent: int = 0
    created: int = 0  # 201 answers
    errors: int = 0


def _charge_phase(
    phases: Phases,
    factory: fleet.ChargeFactory,
    ledger: ChargeLedger,
    srv: stack.ServerProcess,
    count: int,
    **kw: Any,
) -> dict[str, Any]:
    built_before = factory.made
    requests = factory.build(count)
    pids = srv.worker_pids()
    before = [stack.cpu_seconds(pid) or 0.0 for pid in pids]
    offset = srv.log_offset()
    result = phases.run(srv.port, requests, expect=201, **kw)
    result["server_ms"] = server_latency(srv.access_lines(offset))
    # CPU seconds of each worker over the phase: shows how evenly the connections were spread.
    after = [stack.cpu_seconds(pid) or 0.0 for pid in pids]
    result["worker_cpu_s"] = [round(b - a, 2) for a, b in zip(before, after, strict=True)]
    # Only what went out counts as sent (a closed loop may leave some of the batch unsent).
    ledger.keys_sent += min(result["taken"], factory.made - built_before)
    ledger.created += int(result["statuses"].get("201", 0))
    ledger.errors += int(result["errors"])
    return result


def server_latency(lines: list[dict[str, Any]]) -> dict[str, float | None]:
    """The phase's charges as the server timed them (the access log's ``ms``, from the request
    middleware to the last byte, warm-up included): beside the generator's figures, it tells a
    tail spent in the server from one spent queued before it or in the generator."""
    ms = [float(line["ms"]) / 1000 for line in lines if line.get("path") == fleet.CHARGE_PATH]
    return percentiles(ms)


def _cpu_per(seconds: float, result: dict[str, Any]) -> float | None:
    """CPU milliseconds per answered request over a whole phase (warm-up included)."""
    completed = int(result.get("completed") or 0)
    return round(seconds * 1000 / completed, 3) if completed else None


def _per_charge(before: dict[str, int], after: dict[str, int], charges: int) -> dict[str, float]:
    if not before or not after or charges <= 0:
        return {}
    return {k: round((after[k] - before[k]) / charges, 2) for k in after if k in before}


def _measured_per_charge(
    *,
    charges: int,
    cpu_s: float,
    pg: dict[str, float],
    redis_commands: int | None,
    be: stack.Backend,
) -> dict[str, Any]:
    """What one charge of the peak phase cost, from counters read before and after it."""
    xacts = (
        round(pg["xact_commit"] + pg["xact_rollback"], 2)
        if "xact_commit" in pg and "xact_rollback" in pg
        else None
    )
    return {
        "charges": charges,
        "cpu_ms_per_charge": round(cpu_s * 1000 / charges, 3) if charges else None,
        "pg_transactions_per_charge": xacts,
        "redis_commands_per_charge": (
            round(redis_commands / charges, 2) if redis_commands is not None and charges else None
        ),
        "redis_counts": (
            None
            if be.redis_prefix is None
            else "this run's own Redis server"
            if be.redis_private
            else "the shared Redis server (other clients' commands count too)"
        ),
    }


def run_config(
    *,
    be: stack.Backend,
    workers: int,
    options: Options,
    phases: Phases,
    work_dir: Path,
    say: Say,
    shared: dict[str, Any],
    ledger: ChargeLedger,
    server_cpus: set[int] | None,
) -> dict[str, Any]:
    p = options.preset
    log_path = work_dir / f"server-{be.name}-{workers}w.log"
    doc: dict[str, Any] = {
        "backend": be.name,
        "workers": workers,
        "server_cpus": sorted(server_cpus) if server_cpus else "all",
        "generator_cpu": phases.cpu,
        "load_before": _loadavg(),
        "server_env": options.env(),
    }
    with stack.server(
        be, workers=workers, log_path=log_path, cpus=server_cpus, extra_env=options.env()
    ) as srv:
        doc["server_start_s"] = round(srv.started_in, 2)
        say(
            f"{be.name}, {workers} worker(s): serving on {srv.url} (started in {srv.started_in:.1f} s)"
        )
        host = f"127.0.0.1:{srv.port}"
        if "terminals" not in shared:
            n = options.devices or p.devices
            made = fleet.provision(be.settings(), n + fleet.ACTIVATION_WARMUP)
            warm = dataclasses.replace(made, devices=made.devices[: fleet.ACTIVATION_WARMUP])
            made = dataclasses.replace(made, devices=made.devices[fleet.ACTIVATION_WARMUP :])
            # The process's first activations compile its statements and fill its caches; they
            # are measured apart (first_devices_ms), as the charge phases have their warm-up.
            offset = srv.log_offset()
            fleet.activate(srv.url, warm, threads=1)
            time.sleep(0.3)
            first = fleet.activation_server_time(srv.access_lines(offset), fleet.ACTIVATION_WARMUP)
            offset, cpu0 = srv.log_offset(), srv.cpu()
            activation = fleet.activate(srv.url, made, threads=options.activation_threads)
            time.sleep(0.3)  # the last log lines
            cpu_s = srv.cpu() - cpu0  # the workers' CPU over the activations (/proc)
            lines = srv.access_lines(offset)
            shared["terminals"] = activation.terminals
            shared["activation"] = {
                **fleet.activation_server_time(lines, len(activation.terminals)),
                "first_devices_ms": first["server_ms_per_device"],
                # all the workers' CPU meanwhile (the requests' own, inside and outside the
                # access log's timing, and background tasks'): near the server time, the
                # activation is CPU-bound; well below it, it waits on PostgreSQL or Redis
                "cpu_ms_per_device": round(cpu_s * 1000 / len(activation.terminals), 2)
                if activation.terminals
                else None,
                "workers": workers,
                "wall_s": round(activation.wall_s, 2),
                "client_ms_per_device": activation.client_ms,
            }
            say(
                f"  activated {n} terminals in {activation.wall_s:.1f} s: "
                f"{shared['activation']['server_ms_per_device']} ms of server time each; "
                f"worker CPU {shared['activation']['cpu_ms_per_device']} ms per device"
            )
        factory = fleet.ChargeFactory(shared["terminals"], host)
        shared.setdefault("factories", []).append(factory)

        health = build_request("GET", "/healthz", host=host)
        cpu0 = srv.cpu()
        doc["healthz"] = phases.run(
            srv.port, [health], mode="closed", duration=p.ceiling_s, warmup=p.warmup, cycle=True
        )
        doc["healthz"]["server_cpu_ms_per_request"] = _cpu_per(srv.cpu() - cpu0, doc["healthz"])
        say(f"  GET /healthz ceiling: {doc['healthz']['rps']:.0f} req/s")
        if p.wrk_s:
            doc["wrk_healthz"] = wrk_healthz(srv.url, p.wrk_s, options.connections, phases.cpu)

        # The probe warms the workers up (pools, caches) and sizes the peak phase's batch; a
        # probe that runs out of requests still measures its rate up to its last answer.
        probe_n = 16 * options.connections + 200
        probe = _charge_phase(
            phases, factory, ledger, srv, probe_n, mode="closed", duration=p.probe_s, warmup=0
        )
        probe_done = time.monotonic()
        rate_guess = max(probe["rps"], 20.0)
        peak_n = int(rate_guess * 1.6 * (p.warmup + p.peak_s)) + 4 * options.connections
        # pg_stat_database lags up to 10 s behind the server's last transactions: wait for the
        # probe's to be flushed (see stack.pg_stats_settled), and for the peak's after it.
        pg0 = stack.pg_stats_settled(be.database, quiet_since=probe_done) if be.database else {}
        counter = stack.RedisCommands(be.env["VIOPAY_REDIS_URL"]) if be.redis_prefix else None
        try:
            redis0 = counter.read() if counter else None
            cpu0, pgcpu0 = srv.cpu(), stack.postgres_cpu_seconds() if be.database else None
            with _busy_connections(be) as busy:
                peak = _charge_phase(
                    phases,
                    factory,
                    ledger,
                    srv,
                    peak_n,
                    mode="closed",
                    duration=p.peak_s,
                    warmup=p.warmup,
                )
            peak["pg_connections_in_transaction"] = busy or None
            peak_done = time.monotonic()
            cpu1, pgcpu1 = srv.cpu(), stack.postgres_cpu_seconds() if be.database else None
            redis1 = counter.read() if counter else None
        finally:
            if counter:
                counter.close()
        pg1 = stack.pg_stats_settled(be.database, quiet_since=peak_done) if be.database else {}
        charges = int(peak["statuses"].get("201", 0))  # the charges the phase completed
        peak["server_cpu_ms_per_request"] = _cpu_per(cpu1 - cpu0, peak)
        if pgcpu0 is not None and pgcpu1 is not None:
            peak["postgres_cpu_ms_per_request"] = _cpu_per(pgcpu1 - pgcpu0, peak)
        doc["charge_peak"] = peak
        doc["pg_per_charge"] = _per_charge(pg0, pg1, charges)
        doc["per_charge"] = _measured_per_charge(
            charges=charges,
            cpu_s=cpu1 - cpu0,
            pg=doc["pg_per_charge"],
            redis_commands=(redis1 - redis0 if redis0 is not None and redis1 is not None else None),
            be=be,
        )
        doc["redis_commands_per_charge"] = doc["per_charge"]["redis_commands_per_charge"]
        pc = doc["per_charge"]
        say(
            f"  POST /pos/charge peak: {peak['rps']:.0f} req/s, p99 {peak['latency_ms']['p99']} ms,"
            f" errors {peak['errors']}; per charge: {pc['cpu_ms_per_charge']} ms of worker CPU,"
            f" {pc['pg_transactions_per_charge']} PostgreSQL transactions,"
            f" {pc['redis_commands_per_charge']} Redis commands"
        )

        loads = []
        for fraction in LOADS:
            rate = max(1.0, peak["rps"] * fraction)
            count = math.ceil(rate * (p.warmup + p.load_s))
            result = _charge_phase(
                phases,
                factory,
                ledger,
                srv,
                count,
                mode="open",
                duration=p.load_s,
                warmup=p.warmup,
                rate=rate,
            )
            result["fraction"] = fraction
            loads.append(result)
            lat = result["latency_ms"]
            say(
                f"  {int(fraction * 100):>3} % ({rate:.0f} req/s offered): {result['rps']:.0f} req/s,"
                f" p50 {lat['p50']} / p95 {lat['p95']} / p99 {lat['p99']} ms"
                f" (in the server: p50 {result['server_ms']['p50']} / p99 {result['server_ms']['p99']}),"
                f" errors {result['errors']}"
            )
        doc["loads"] = loads
        doc["heartbeat_peak"] = _heartbeat_phase(
            srv, phases, fleet.HeartbeatFactory(shared["terminals"], host), p, peak["rps"]
        )
        hb = doc["heartbeat_peak"]
        say(
            f"  POST /pos/heartbeat peak: {hb['rps']:.0f} req/s, errors {hb['errors']};"
            f" {hb['server_cpu_ms_per_request']} ms of worker CPU per heartbeat"
        )

        if (
            options.profile
            and not shared.get("profiled")
            and (be.name == "postgres" or options.backends == ["embedded"])
        ):
            shared["profiled"] = True
            doc["profile"] = _profile(
                srv, phases, factory, ledger, options, work_dir, peak["rps"], say
            )
        doc["memory"] = srv.memory()
    if options.sandbox_latency_ms is not None:
        doc["with_latency"] = _with_latency(
            be=be,
            workers=workers,
            options=options,
            phases=phases,
            factory=factory,
            ledger=ledger,
            work_dir=work_dir,
            server_cpus=server_cpus,
            peak_rps=float(doc["charge_peak"]["rps"]),
            pg_busy_without=doc["charge_peak"].get("pg_connections_in_transaction"),
            say=say,
        )
    doc["load_after"] = _loadavg()
    return doc


def _heartbeat_phase(
    srv: stack.ServerProcess,
    phases: Phases,
    factory: fleet.HeartbeatFactory,
    p: Preset,
    charge_rps: float,
) -> dict[str, Any]:
    """Heartbeats in a closed loop as long as the charge peak: every terminal sends one a
    minute (PROTOCOL §8), so a fleet sends far more of them than charges, and their CPU sizes a
    deployment as much as the charges' do. The batch is sized on the charge peak (a batch that
    runs out still measures its rate up to its last answer). No more connections than
    terminals, the requests round robin over them: a terminal's heartbeats seldom overlap and
    wait on their own rows' locks, as in a fleet, where each beats once a minute."""
    connections = min(phases.connections, len(factory.terminals))
    count = int(max(charge_rps, 20.0) * 2 * (p.warmup + p.peak_s)) + 4 * connections
    requests = factory.build(count)
    cpu0 = srv.cpu()
    result = phases.run(
        srv.port,
        requests,
        mode="closed",
        duration=p.peak_s,
        warmup=p.warmup,
        expect=200,
        connections=connections,
    )
    result["connections"] = connections
    result["server_cpu_ms_per_request"] = _cpu_per(srv.cpu() - cpu0, result)
    return result


def _busy_connections(be: stack.Backend) -> AbstractContextManager[dict[str, Any]]:
    """PostgreSQL connections inside a transaction during a phase (sampled), or nothing."""
    return stack.pg_busy_connections(be.database) if be.database else nullcontext({})


def _with_latency(
    *,
    be: stack.Backend,
    workers: int,
    options: Options,
    phases: Phases,
    factory: fleet.ChargeFactory,
    ledger: ChargeLedger,
    work_dir: Path,
    server_cpus: set[int] | None,
    peak_rps: float,
    pg_busy_without: dict[str, Any] | None,
    say: Say,
) -> dict[str, Any]:
    """The peak again, on a server whose sandbox takes ``sandbox_latency_ms`` per call.

    A closed loop of C connections cannot exceed C / latency charges per second, so C is sized
    for twice the peak just measured, plus the usual connections (at 300 ms and 150/s: 45 in
    flight, 2 × 45 + 32 = 122 connections); a server
    that blocks a worker or holds a database connection across the processor call falls short
    of its no-latency peak, one that does not keeps it."""
    p = options.preset
    latency_ms = int(options.sandbox_latency_ms or 0)
    seconds = latency_ms / 1000
    in_flight = math.ceil(2 * peak_rps * seconds) + options.connections
    connections = min(1000, max(options.connections, in_flight))
    log_path = work_dir / f"server-{be.name}-{workers}w-latency{latency_ms}.log"
    env = options.env() | {"VIOPAY_SANDBOX_LATENCY_MS": str(latency_ms)}
    with stack.server(
        be, workers=workers, log_path=log_path, cpus=server_cpus, extra_env=env
    ) as srv:
        # One charge at a time first: its latency is the processor's plus the charge's own,
        # with no queue in front (a p50 below N ms: the server ignored the setting).
        single_s = max(1.0, 4 * seconds)
        single = _charge_phase(
            phases,
            factory,
            ledger,
            srv,
            int(single_s / max(seconds, 0.005)) + 20,
            mode="closed",
            duration=single_s,
            warmup=0,
            connections=1,
        )
        warmup = p.warmup + p.probe_s + seconds  # fresh workers: pools and caches fill first
        count = int(max(peak_rps, 20.0) * 1.6 * (warmup + p.peak_s)) + 4 * connections
        cpu0 = srv.cpu()
        with _busy_connections(be) as busy:
            result = _charge_phase(
                phases,
                factory,
                ledger,
                srv,
                count,
                mode="closed",
                duration=p.peak_s,
                warmup=warmup,
                connections=connections,
            )
        charges = int(result["statuses"].get("201", 0))
        cpu_s = srv.cpu() - cpu0
    doc = {
        "sandbox_latency_ms": latency_ms,
        "connections": connections,
        "charge_rps": result["rps"],
        "charge_rps_without": peak_rps,
        "pg_connections_in_transaction_without": pg_busy_without,
        "ratio_to_without": round(result["rps"] / peak_rps, 3) if peak_rps else None,
        "cpu_ms_per_charge": round(cpu_s * 1000 / charges, 3) if charges else None,
        # PostgreSQL connections inside a transaction, sampled every 0.1 s during the phase
        "pg_connections_in_transaction": busy or None,
        "latency_ms": result["latency_ms"],
        "single_connection_p50_ms": single["latency_ms"]["p50"],
        "errors": result["errors"] + single["errors"],
        "statuses": result["statuses"],
        "error_samples": result["error_samples"] + single["error_samples"],
    }
    alone = single["latency_ms"]["p50"]
    note = (
        f" (one at a time: p50 {alone} ms < {latency_ms} ms, the server ignored"
        " VIOPAY_SANDBOX_LATENCY_MS)"
        if alone is not None and alone < latency_ms
        else f" (one at a time: p50 {alone} ms)"
    )
    say(
        f"  with the sandbox at {latency_ms} ms per call, {connections} connections: "
        f"{result['rps']:.0f} charges/s ({doc['ratio_to_without']} of {peak_rps:.0f}),"
        f" p50 {result['latency_ms']['p50']} ms, errors {doc['errors']}{note}"
    )
    return doc


def _profile(
    srv: stack.ServerProcess,
    phases: Phases,
    factory: fleet.ChargeFactory,
    ledger: ChargeLedger,
    options: Options,
    work_dir: Path,
    peak_rps: float,
    say: Say,
) -> dict[str, Any]:
    """py-spy on the (first) worker during a closed-loop charge phase of its own."""
    p = options.preset
    out = work_dir / f"profile-{srv.backend.name}-{srv.workers}w.collapsed.txt"
    pid = srv.worker_pids()[0]
    count = int(max(peak_rps, 20) * 1.5 * (p.profile_s + 1)) + 4 * options.connections
    requests = factory.build(count)
    spy = profiling.record(pid, seconds=p.profile_s, out=out)
    time.sleep(0.5)
    result = phases.run(srv.port, requests, mode="closed", duration=p.profile_s, expect=201)
    ledger.keys_sent += result["taken"]
    ledger.created += int(result["statuses"].get("201", 0))
    ledger.errors += int(result["errors"])
    _, err = spy.communicate(timeout=p.profile_s + 60)
    if not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    summary = profiling.summarise(out)
    summary |= {"file": str(out), "pid": pid, "rps_under_profiler": result["rps"]}
    say(f"  profile: {summary.get('samples')} samples, self % {summary.get('self_pct')}")
    return summary


def run(options: Options, say: Say) -> dict[str, Any]:
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_dir = options.out_dir.resolve()  # the servers run in their data folders
    run_dir = out_dir / f"{stamp}-{options.mode}"
    work_dir = run_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    ncpu = stack.cpu_count()
    gen_cpu = ncpu - 1 if options.pin and ncpu >= 2 else None
    one_worker_cpus = {0} if options.pin and ncpu >= 2 else None
    phases = Phases(work_dir, gen_cpu, options.connections)
    p = options.preset
    doc: dict[str, Any] = {
        "tool": "viopay-tools bench",
        "mode": options.mode,
        "started_at": started.isoformat(),
        "machine": machine(),
        "load_before": _loadavg(),
        "connections": options.connections,
        "keystore": options.keystore,
        "loads": list(LOADS),
        "preset": p.__dict__,
    }
    say(
        f"machine: {doc['machine']['cpus']} CPUs ({doc['machine']['cpu_model']}), "
        f"load average {doc['load_before']}"
    )
    doc["generator"] = {
        "kind": "viopay_tools.bench.loadgen: raw HTTP/1.1 keep-alive on uvloop, its own process",
        "cpu": gen_cpu,
        "ceiling": generator_ceiling(phases, p.generator_s, 0 if gen_cpu is not None else None),
    }
    say(
        f"load generator's own ceiling (trivial responder): {doc['generator']['ceiling']['rps']:.0f} req/s"
    )
    configs: list[dict[str, Any]] = []
    doc["configs"] = configs
    doc["activation"] = {}
    doc["duplicates"] = {}
    for name in options.backends:
        shared: dict[str, Any] = {}
        ledger = ChargeLedger()
        with stack.backend(name, work_dir, keystore=options.keystore) as be:
            for workers in options.workers:
                if workers > be.max_workers:
                    configs.append(
                        {
                            "backend": name,
                            "workers": workers,
                            "skipped": "the embedded default runs 1 worker: its in-process cache is "
                            "not shared between processes (more need Redis)",
                        }
                    )
                    continue
                cpus = one_worker_cpus if workers == 1 else None
                configs.append(
                    run_config(
                        be=be,
                        workers=workers,
                        options=options,
                        phases=phases,
                        work_dir=work_dir,
                        say=say,
                        shared=shared,
                        ledger=ledger,
                        server_cpus=cpus,
                    )
                )
            if "activation" in shared:
                doc["activation"][name] = shared["activation"]
            counts = fleet.count_charges(be.settings())
            doc["duplicates"][name] = {
                **counts,
                "keys_sent": ledger.keys_sent,
                "created_201": ledger.created,
                "duplicates": counts["charges"] - counts["distinct_keys"] + counts["without_key"],
                "stored_without_201": max(0, counts["charges"] - ledger.created),
            }
            say(
                f"{name}: {counts['charges']} charges stored for {ledger.keys_sent} keys sent, "
                f"{doc['duplicates'][name]['duplicates']} duplicates"
            )
    doc["load_after"] = _loadavg()
    doc["finished_at"] = datetime.now(UTC).isoformat()
    doc["elapsed_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    from viopay_tools.bench import report

    doc["summary"] = report.summary(doc)
    doc["targets"] = report.targets(doc)
    (run_dir / "result.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    plot = report.plot(doc, run_dir / "latency.png")
    doc["files"] = {"json": str(run_dir / "result.json"), "plot": str(plot) if plot else None}
    (run_dir / "result.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    latest = out_dir / f"latest-{options.mode}.json"
    latest.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    shutil.rmtree(work_dir / "embedded-data", ignore_errors=True)
    for leftover in work_dir.glob("phase-*"):
        leftover.unlink(missing_ok=True)
    return doc
