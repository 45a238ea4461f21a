"""Cold start of ``mcp-secrets serve`` over stdio against a trivial server on the same SDK, with hyperfine.

    .venv/bin/python benchmarks/cold_start.py [--rounds 4] [--runs 6]
    .venv/bin/python benchmarks/cold_start.py client mcp-secrets|trivial   # one run, as hyperfine does

Each run is a fresh Python client that spawns the server through the SDK's
stdio client, initialises, calls one tool (``list_secret_keys`` on a store
with one secret; ``ping`` on ``_trivial_server.py``) and exits. hyperfine
(``apt-get install hyperfine``) times both commands; the round is repeated with
the commands' order swapped, and the ratio is the median over rounds of
mcp-secrets' median time ÷ the trivial server's (lower is better; target ≤ 1.1).
The command hyperfine runs first is slower by several percent whichever it is,
so the rounds are even in number: each order counts as much as the other.
The client's own start-up is in both sides. CPU time (user + system of the
client and server processes, from hyperfine) is shown too: on a busy machine
it is steadier than wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import anyio
from _harness import BENCHMARKS, PYTHON, Ratio, isolated_env, machine, table, verdict
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

SERVERS = ("mcp-secrets", "trivial")
TARGET = 1.1


def _server(which: str) -> tuple[StdioServerParameters, str]:
    """How to spawn ``which``, and the one tool to call on it."""
    if which == "mcp-secrets":
        # The console script users run, from the same environment as this Python.
        command = Path(PYTHON).with_name("mcp-secrets")
        settings = {name: value for name, value in os.environ.items() if name.startswith("MCP_SECRETS_")}
        return StdioServerParameters(command=str(command), args=["serve"], env=settings), "list_secret_keys"
    return StdioServerParameters(command=PYTHON, args=[str(BENCHMARKS / "_trivial_server.py")]), "ping"


async def client(which: str, errlog: TextIO) -> None:
    """One cold start: spawn, initialise, one call, exit."""
    params, tool = _server(which)
    async with Client(stdio_client(params, errlog=errlog)) as session:
        result = await session.call_tool(tool, {})
    if result.is_error:
        raise RuntimeError(f"{tool} failed on {which}: {result.content}")


def hyperfine_round(
    hyperfine: str, order: list[str], runs: int, env: dict[str, str], export: Path
) -> dict[str, dict[str, float]]:
    """One hyperfine invocation over both commands; per server its median, mean, sd and CPU seconds."""
    commands = [f"{PYTHON} {Path(__file__).resolve()} client {which}" for which in order]
    options = ["-N", "--warmup", "1", "--runs", str(runs), "--style", "none", "--export-json", str(export)]
    subprocess.run(  # noqa: S603 - our own command line, no shell
        [hyperfine, *options, *commands],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results = json.loads(export.read_text(encoding="utf-8"))["results"]
    return {
        which: {
            "median": result["median"],
            "mean": result["mean"],
            "stddev": result["stddev"] or 0.0,
            "cpu": result["user"] + result["system"],
        }
        for which, result in zip(order, results, strict=True)
    }


def main(rounds: int, runs: int) -> None:
    """Rounds of hyperfine, alternating the commands' order; print the table."""
    hyperfine = shutil.which("hyperfine")
    if hyperfine is None:
        raise SystemExit("hyperfine is not installed: apt-get install -y hyperfine")
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-bench-") as tmp:
        env = isolated_env(Path(tmp), MCP_SECRETS_USER="alice")
        # One secret in the store, set through the CLI, so the measured call reads a real record.
        subprocess.run(  # noqa: S603 - our own command line, no shell
            [PYTHON, "-m", "mcp_secrets", "set", "github", "GITHUB_TOKEN"],
            input="ghp_" + "x" * 36 + "\n",
            env=env,
            text=True,
            check=True,
            capture_output=True,
        )
        rows, wall_ratios, cpu_ratios = [], [], []
        for index in range(rounds):
            order = list(SERVERS) if index % 2 == 0 else list(reversed(SERVERS))
            timing = hyperfine_round(hyperfine, order, runs, env, Path(tmp) / f"round{index}.json")
            ours, trivial = timing["mcp-secrets"], timing["trivial"]
            wall_ratios.append(ours["median"] / trivial["median"])
            cpu_ratios.append(ours["cpu"] / trivial["cpu"])
            rows.append(
                [
                    f"round {index + 1} ({order[0]} first)",
                    f"{ours['median']:.2f} s (±{ours['stddev']:.2f})",
                    f"{trivial['median']:.2f} s (±{trivial['stddev']:.2f})",
                    f"{wall_ratios[-1]:.2f}",
                    f"{ours['cpu']:.2f} / {trivial['cpu']:.2f} s",
                    f"{cpu_ratios[-1]:.2f}",
                ]
            )
    wall = statistics.median(wall_ratios)
    cpu = statistics.median(cpu_ratios)
    spread = str(Ratio.of(wall_ratios)) if len(wall_ratios) > 1 else f"{wall:.2f}"
    rows.append(["median of rounds", "", "", spread, "", f"{cpu:.2f}"])
    table(
        [
            "cold start over stdio",
            "mcp-secrets",
            "trivial",
            "wall ratio",
            "CPU mcp-secrets / trivial",
            "CPU ratio",
        ],
        rows,
        title=f"Spawn, initialise, one call, exit: {rounds} hyperfine rounds of {runs} runs ({machine()})",
    )
    print(f"\nwall ratio {wall:.2f}: target ≤ {TARGET} {verdict(wall, TARGET, higher_is_better=False)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        with Path(os.devnull).open("w", encoding="utf-8") as server_stderr:
            anyio.run(client, sys.argv[2], server_stderr)
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=4, help="hyperfine rounds, order swapped each; keep it even (default 4)"
    )
    parser.add_argument("--runs", type=int, default=6, help="runs of each command per round (default 6)")
    options = parser.parse_args()
    main(options.rounds, options.runs)
