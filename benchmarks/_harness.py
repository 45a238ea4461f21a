"""Shared helpers of the benchmarks: block-pair ratios, a server's CPU time, isolated servers, a table.

Not a benchmark itself. The machines are shared and noisy, so every figure is a
ratio against a baseline measured in the same run: ``block_pairs`` alternates a
block of calls of the baseline (the "floor") with a block of the code under
test, swapping which goes first at each pair so that drift hits both alike,
and reports the median of the per-pair ratios with its quartiles.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2

from mcp_secrets.crypto import generate_master_key

BENCHMARKS = Path(__file__).resolve().parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
AsyncCall = Callable[[], Awaitable[object]]
SyncCall = Callable[[], object]
Meter = Callable[[], float]
WALL: Mapping[str, Meter] = {"wall": time.perf_counter}


@dataclass(frozen=True)
class Ratio:
    """The median of per-pair ratios, with the quartiles of their spread."""

    median: float
    p25: float
    p75: float
    pairs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Ratio:
        """Summarise per-pair ratios."""
        if len(values) < 2:
            raise SystemExit("a ratio needs at least 2 block pairs: give --blocks 2 or more")
        p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, p25, p75, len(values))

    @classmethod
    def per_pair(cls, numerators: Sequence[float], denominators: Sequence[float]) -> Ratio:
        """Summarise the ratios of paired costs; a block too short for its meter says so."""
        if min(denominators, default=1.0) <= 0:
            # /proc counts CPU time in clock ticks (10 ms): a short block can measure none at all.
            raise SystemExit("a block measured no time on one of its meters: give more --calls per block")
        return cls.of([n / d for n, d in zip(numerators, denominators, strict=True)])

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.p25:.2f}-{self.p75:.2f})"


@dataclass(frozen=True)
class Pairs:
    """Per-call cost of the floor and of the subject in each block pair, by one meter."""

    floor: list[float]
    subject: list[float]

    def ratio(self) -> Ratio:
        """Floor cost ÷ subject cost: 1.0 is free, higher is better."""
        return Ratio.per_pair(self.floor, self.subject)

    def cost_ratio(self) -> Ratio:
        """Subject cost ÷ floor cost: how many floors one subject call costs, lower is better."""
        return Ratio.per_pair(self.subject, self.floor)

    @property
    def floor_median(self) -> float:
        """The median per-call cost of the floor."""
        return statistics.median(self.floor)

    @property
    def subject_median(self) -> float:
        """The median per-call cost of the subject."""
        return statistics.median(self.subject)


def _pairs_of(samples: list[dict[str, tuple[float, float]]]) -> dict[str, Pairs]:
    return {
        name: Pairs([sample[name][0] for sample in samples], [sample[name][1] for sample in samples])
        for name in samples[0]
    }


async def _async_block(call: AsyncCall | Sequence[AsyncCall], calls: int) -> None:
    if callable(call):
        for _ in range(calls):
            await call()
        return

    # One call sequence per client, all at once: ``calls`` in total, split evenly.
    async def worker(one: AsyncCall, count: int) -> None:
        for _ in range(count):
            await one()

    async with anyio.create_task_group() as group:
        for index, one in enumerate(call):
            group.start_soon(worker, one, calls // len(call) + (index < calls % len(call)))


async def _timed_async(
    call: AsyncCall | Sequence[AsyncCall], calls: int, meters: Mapping[str, Meter]
) -> dict[str, float]:
    start = {name: meter() for name, meter in meters.items()}
    await _async_block(call, calls)
    return {name: (meter() - start[name]) / calls for name, meter in meters.items()}


async def block_pairs(
    floor: AsyncCall | Sequence[AsyncCall],
    subject: AsyncCall | Sequence[AsyncCall],
    *,
    blocks: int = 15,
    calls: int = 200,
    meters: Mapping[str, Meter] = WALL,
    warmup: int = 1,
) -> dict[str, Pairs]:
    """Alternate ``blocks`` pairs of ``calls`` calls of ``floor`` and ``subject``; per-call cost by meter.

    A sequence of callables stands for concurrent clients: a block then runs
    ``calls`` calls split among them at once. The first ``warmup`` pairs are
    run and dropped.
    """
    samples = []
    for index in range(warmup + blocks):
        if index % 2 == 0:
            floor_cost = await _timed_async(floor, calls, meters)
            subject_cost = await _timed_async(subject, calls, meters)
        else:
            subject_cost = await _timed_async(subject, calls, meters)
            floor_cost = await _timed_async(floor, calls, meters)
        if index >= warmup:
            samples.append({name: (floor_cost[name], subject_cost[name]) for name in meters})
    return _pairs_of(samples)


async def block_pair_ratio(
    floor: AsyncCall | Sequence[AsyncCall],
    subject: AsyncCall | Sequence[AsyncCall],
    *,
    blocks: int = 15,
    calls: int = 200,
) -> Ratio:
    """Wall-clock floor time ÷ subject time, the median of ``blocks`` block pairs (1.0 is free)."""
    return (await block_pairs(floor, subject, blocks=blocks, calls=calls))["wall"].ratio()


def _timed_sync(call: SyncCall, calls: int, meters: Mapping[str, Meter]) -> dict[str, float]:
    start = {name: meter() for name, meter in meters.items()}
    for _ in range(calls):
        call()
    return {name: (meter() - start[name]) / calls for name, meter in meters.items()}


def block_pairs_sync(
    floor: SyncCall,
    subject: SyncCall,
    *,
    blocks: int = 15,
    calls: int = 200,
    meters: Mapping[str, Meter] = WALL,
    warmup: int = 1,
) -> dict[str, Pairs]:
    """``block_pairs`` for plain functions, without an event loop's cost on either side."""
    samples = []
    for index in range(warmup + blocks):
        if index % 2 == 0:
            floor_cost = _timed_sync(floor, calls, meters)
            subject_cost = _timed_sync(subject, calls, meters)
        else:
            subject_cost = _timed_sync(subject, calls, meters)
            floor_cost = _timed_sync(floor, calls, meters)
        if index >= warmup:
            samples.append({name: (floor_cost[name], subject_cost[name]) for name in meters})
    return _pairs_of(samples)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and all its threads, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def cpu_meter(pid: int) -> Meter:
    """A meter of process ``pid``'s CPU time, for ``block_pairs``."""
    return lambda: process_cpu_seconds(pid)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    """Print rows as a plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        return "  ".join(
            [first.ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True))]
        )

    if title:
        print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * width for width in widths))
    for row in cells[1:]:
        print(line(row))


def verdict(value: float, target: float, *, higher_is_better: bool) -> str:
    """``ok`` or ``MISSED`` for a median against its target."""
    met = value >= target if higher_is_better else value <= target
    return "ok" if met else "MISSED"


def micros(seconds: float) -> str:
    """A per-call time for humans, in microseconds."""
    return f"{seconds * 1e6:,.1f} µs"


def machine() -> str:
    """One line on where the figures were taken."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}"
    )


def isolated_env(root: Path, **overrides: str) -> dict[str, str]:
    """The process environment without the caller's MCP_SECRETS_*, with data and config in ``root``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MCP_SECRETS_")}
    env.update(
        MCP_SECRETS_DATA_DIR=str(root / "data"),
        MCP_SECRETS_CONFIG_DIR=str(root / "config"),
        MCP_SECRETS_MASTER_KEY=generate_master_key(),
    )
    env.update(overrides)
    return env


def cli(env: Mapping[str, str], *args: str) -> str:
    """Run ``mcp-secrets ARGS`` to completion and return its stdout."""
    done = subprocess.run(  # noqa: S603 - our own command line, no shell
        [PYTHON, "-m", "mcp_secrets", *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def http_server(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, base_url: str
) -> Iterator[int]:
    """Start an HTTP server subprocess, wait until ``base_url``/healthz answers, yield its pid; stop it."""
    with log_path.open("a", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 - the benchmark's own command line, no shell
            command, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        _wait_healthy(process, base_url, log_path)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    with httpx2.Client(trust_env=False, timeout=2) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if http.get(f"{base_url}/healthz").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"the server did not answer /healthz:\n{log_path.read_text()}")
