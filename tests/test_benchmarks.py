"""The benchmark scripts run: each with a few tiny blocks, so that none rots between the runs by hand.

Only that they run and print their tables is checked here. Their figures mean nothing at this size
and no time is asserted: the figures come from running the scripts by hand (benchmarks/README.md).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import mongomock
import pytest

from conftest import isolated_env
from mcp_secrets.store.mongo import MongoStore

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT_TIMEOUT = 600


def run_benchmark(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """One script, from the checkout, with MCP_SECRETS_* confined to tmp_path."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / args[0]), *args[1:]],
        env=isolated_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "printed"),
    [
        (["crypto.py", "--blocks", "2", "--calls", "10"], "SecretEncryptor ÷ bare AESGCM"),
        (["get_secrets.py", "--blocks", "2", "--calls", "3"], "Where the time goes"),
        (["store_scaling.py", "--max-records", "1000", "--blocks", "2", "--calls", "3"], "upserts"),
        # Blocks of 30 calls: /proc counts the server's CPU time in 10 ms ticks.
        (["tools.py", "--blocks", "2", "--calls", "30"], "server CPU/call, 8 clients"),
        (["gateway_overhead.py", "--pairs", "2", "--calls", "5"], "mcp-secrets serve"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else "",
)
def test_a_benchmark_runs_and_prints_its_table(tmp_path: Path, args: list[str], printed: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    done = run_benchmark(tmp_path, *args, TMPDIR=str(scratch))

    assert done.returncode == 0, done.stderr[-3000:]
    assert printed in done.stdout
    # Its stores and keys were temporary: none is left behind, run after run.
    assert sorted(path.name for path in scratch.iterdir()) == []


@pytest.mark.parametrize("server", ["mcp-secrets", "trivial"])
def test_one_cold_start_run_spawns_initialises_and_calls(tmp_path: Path, server: str) -> None:
    # What hyperfine times, run once here (hyperfine itself is not needed for that).
    done = run_benchmark(tmp_path, "cold_start.py", "client", server)

    assert done.returncode == 0, done.stderr[-3000:]


def test_the_get_secrets_benchmark_refuses_mongodb_without_a_server(tmp_path: Path) -> None:
    done = run_benchmark(tmp_path, "get_secrets.py", "--store", "mongodb", MONGODB_URI="")

    assert done.returncode != 0
    assert "MONGODB_URI" in done.stderr


def test_the_get_secrets_workload_runs_on_the_mongodb_store_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The MongoDB path of the script, on mongomock: that it runs, never a figure.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    benchmark = importlib.import_module("get_secrets")
    work = benchmark.Workload(MongoStore(mongomock.MongoClient(tz_aware=True), "bench"), calls=2)
    try:
        benchmark.ratio(work, blocks=2, calls=2)
    finally:
        work.secrets.close()

    assert "get_secrets on MongoDB" in capsys.readouterr().out
