"""Store faults: unreachable at start, locked by another process mid-run or briefly, pruned while serving,
its disk full.

`mcp-secrets serve` runs as a real subprocess; another process takes SQLite's
write lock on the same file, as a second replica, a backup or an admin's
sqlite3 shell would. The full disk is a real one, a small tmpfs (root only).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets as _random
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp_types import CallToolResult

from conftest import text_of

from .conftest import Deployment, create_token, free_port, isolated_env, run_cli, serving

pytestmark = pytest.mark.anyio

BRIEF_LOCK_SECONDS = 0.5
# Holds SQLite's write lock on the file named by argv[1] from its own connection until a line arrives
# on stdin. Inside the lock it adds an audit event, so the order of events shows who wrote first.
LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
connection.execute("INSERT INTO audit_events (at, actor, action) VALUES ('', 'lock-holder', 'locked')")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
connection.close()
"""


# --- unavailable at start ---------------------------------------------------------------------------


def _unreachable_mongodb(root: Path) -> dict[str, str]:
    return {"MCP_SECRETS_DATABASE_URL": "mongodb://127.0.0.1:1/x"}


def _sqlite_under_a_regular_file(root: Path) -> dict[str, str]:
    regular_file = root / "not-a-directory"
    regular_file.write_text("")
    return {"MCP_SECRETS_DATA_DIR": str(regular_file / "data")}


@pytest.mark.parametrize(
    ("settings", "store"),
    [
        pytest.param(_unreachable_mongodb, "MongoDB", id="mongodb-on-a-closed-port"),
        pytest.param(_sqlite_under_a_regular_file, "SQLite", id="sqlite-path-under-a-regular-file"),
    ],
)
def test_serve_exits_with_one_clear_line_when_the_store_is_unavailable_at_start(
    tmp_path: Path, settings: Callable[[Path], dict[str, str]], store: str
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_LOG_LEVEL="INFO", **settings(tmp_path))

    served = run_cli(env, "serve", "--transport", "streamable-http", "--port", str(free_port()))

    assert served.returncode == 1, served.stderr
    assert "Traceback" not in served.stderr
    last_line = served.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mcp-secrets: error: ")
    assert f"the {store} store" in last_line
    assert env["MCP_SECRETS_MASTER_KEY"] not in served.stderr


def test_serve_on_a_port_in_use_exits_saying_so_without_a_traceback(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        served = run_cli(env, "serve", "--transport", "streamable-http", "--port", str(port))

    assert served.returncode != 0
    assert "Traceback" not in served.stderr
    assert "address already in use" in served.stderr
    assert f"could not serve on 127.0.0.1 port {port}" in served.stderr
    assert env["MCP_SECRETS_MASTER_KEY"] not in served.stderr


# --- locked by another process while serving ------------------------------------------------------


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Settings of one SQLite store, shared by the servers of this module's tests."""
    return isolated_env(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def alice_token(store_env: dict[str, str]) -> str:
    return create_token(store_env, "alice")


def database_of(env: dict[str, str]) -> Path:
    return Path(env["MCP_SECRETS_DATA_DIR"]) / "secrets.db"


class LockHolder:
    """Another process holding the write lock of a SQLite file until ``release()``."""

    def __init__(self, database: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write("release\n")
        self._process.stdin.close()
        assert self._process.wait(timeout=30) == 0

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], LockHolder]]:
    """``lock_holder(path)`` takes the lock; a holder still running at teardown is killed."""
    holders: list[LockHolder] = []

    def take(database: Path) -> LockHolder:
        holders.append(LockHolder(database))
        return holders[-1]

    yield take
    for holder in holders:
        holder.stop()


async def test_a_locked_store_fails_a_write_with_a_clear_tool_error_and_recovers_without_restart(
    store_env: dict[str, str],
    alice_token: str,
    tmp_path: Path,
    lock_holder: Callable[[Path], LockHolder],
    canary: str,
) -> None:
    env = {**store_env, "MCP_SECRETS_SQLITE_BUSY_TIMEOUT": "0.3"}
    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=alice_token) as alice:
            holder = lock_holder(database_of(env))
            while_locked = await alice.call_tool(
                "set_secret", {"server": "s", "key": "LOCKED", "value": canary}
            )
            holder.release()
            after = await alice.call_tool("set_secret", {"server": "s", "key": "LOCKED", "value": "v2"})
            listed = await alice.call_tool("list_secret_keys", {"server": "s"})

    assert while_locked.is_error
    assert "store is unavailable" in text_of(while_locked)
    assert canary not in text_of(while_locked)
    assert not after.is_error, text_of(after)
    assert after.structured_content == {"server": "s", "key": "LOCKED", "status": "created"}
    assert listed.structured_content is not None
    assert [entry["key"] for entry in listed.structured_content["keys"]] == ["LOCKED"]


async def test_a_write_waits_out_a_lock_shorter_than_the_busy_timeout(
    store_env: dict[str, str], alice_token: str, tmp_path: Path, lock_holder: Callable[[Path], LockHolder]
) -> None:
    database = database_of(store_env)
    with serving(store_env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=alice_token) as alice:
            holder = lock_holder(database)
            outcome: list[CallToolResult] = []

            async def write() -> None:
                arguments = {"server": "s", "key": "WAITED", "value": "v"}
                outcome.append(await alice.call_tool("set_secret", arguments))

            async with anyio.create_task_group() as calls:
                calls.start_soon(write)
                await anyio.sleep(BRIEF_LOCK_SECONDS)
                # Still waiting: the write cannot have happened while the other process held the lock.
                assert outcome == []
                await anyio.to_thread.run_sync(holder.release)

    assert not outcome[0].is_error, text_of(outcome[0])
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        actors = connection.execute(
            "SELECT actor FROM audit_events WHERE actor = 'lock-holder' OR key = 'WAITED' ORDER BY id"
        ).fetchall()
    assert actors[-2:] == [("lock-holder",), ("alice",)]


# --- the store file deleted or replaced under a serving server --------------------------------------


def _delete_the_store(database: Path) -> None:
    """``rm secrets.db*``, as an admin cleaning up (or a mistyped path) would."""
    for path in database.parent.glob(f"{database.name}*"):
        path.unlink()


def _restore_a_backup_over_the_store(database: Path) -> None:
    """A backup renamed over the live file, as a restore with ``mv`` does."""
    backup = database.with_name("backup.db")
    with closing(sqlite3.connect(database)) as live, closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)
    backup.replace(database)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_delete_the_store, id="deleted"),
        pytest.param(_restore_a_backup_over_the_store, id="replaced"),
    ],
)
async def test_a_store_file_deleted_or_replaced_while_serving_refuses_writes_it_would_lose(
    tmp_path: Path, canary: str, change: Callable[[Path], None]
) -> None:
    env = isolated_env(tmp_path)
    # On stdio the tool answers itself; over HTTP the token check, a read, already refuses (401).
    async with Deployment("stdio", env, tmp_path / "server.log").connect("alice") as alice:
        before = await alice.call_tool("set_secret", {"server": "s", "key": "BEFORE", "value": "v"})
        change(database_of(env))
        after = await alice.call_tool("set_secret", {"server": "s", "key": "AFTER", "value": canary})

    assert not before.is_error, text_of(before)
    # Written into a file no longer at the path, the secret would be acknowledged and then gone.
    assert after.is_error
    assert "store is unavailable" in text_of(after)
    assert str(database_of(env)) in text_of(after)
    assert "restart" in text_of(after)
    assert canary not in text_of(after)
    assert canary not in (tmp_path / "server.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_over_http_a_store_that_cannot_be_read_answers_503_not_401(
    tmp_path: Path, canary: str, transport: str
) -> None:
    # A 401 tells a client its token is no good, and MCP clients then start authorising afresh; the
    # token was never judged, so the answer is "try again later".
    env = isolated_env(tmp_path)
    token = create_token(env, "alice")
    with (
        serving(env, transport, tmp_path / "server.log") as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        assert deployment.base_url is not None
        bearer = {"Authorization": f"Bearer {token}"}
        listing = f"{deployment.base_url}/secrets?server=s"
        assert http.get(listing, headers=bearer).status_code == 200
        assert http.get(listing, headers={"Authorization": "Bearer mcps_unknown"}).status_code == 401
        _delete_the_store(database_of(env))

        mcp_request = (
            http.get(deployment.endpoint, headers={**bearer, "Accept": "text/event-stream"})
            if transport == "sse"
            else http.post(
                deployment.endpoint,
                headers={**bearer, "Accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            )
        )
        answers = [http.get(listing, headers=bearer), mcp_request]
        health = http.get(f"{deployment.base_url}/healthz")

    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert "www-authenticate" not in answer.headers
        assert answer.headers["retry-after"].isdigit()
        assert answer.json()["error"] == "temporarily_unavailable"
        assert "store is unavailable" in answer.json()["error_description"]
        assert token not in answer.text
    assert health.status_code == 503
    log = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert token not in log
    assert canary not in log


# --- a long prune of the audit trail beside a serving server ----------------------------------------

OLD_EVENTS = 30_000


async def test_a_prune_in_short_batches_lets_every_write_of_a_serving_server_through(
    tmp_path: Path, canary: str
) -> None:
    # A write waits at most 2 s for the lock here: no batch of the prune may hold it that long.
    env = isolated_env(tmp_path, MCP_SECRETS_SQLITE_BUSY_TIMEOUT="2")
    token = create_token(env, "alice")
    database = database_of(env)
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            "INSERT INTO audit_events (at, actor, action) VALUES (?, 'old', 'used')",
            [(f"2020-01-01T00:00:{index % 60:02d}+00:00",) for index in range(OLD_EVENTS)],
        )
    pruned: list[subprocess.CompletedProcess[str]] = []
    writes: list[CallToolResult] = []

    async def prune() -> None:
        done = await anyio.to_thread.run_sync(
            lambda: run_cli(env, "prune-audit", "--older-than", "30", "--batch-size", "100")
        )
        pruned.append(done)

    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=token) as alice, anyio.create_task_group() as tasks:
            tasks.start_soon(prune)
            while not pruned:
                arguments = {"server": "s", "key": f"K{len(writes)}", "value": canary}
                writes.append(await alice.call_tool("set_secret", arguments))

    [done] = pruned
    assert done.returncode == 0, done.stderr
    assert f"{OLD_EVENTS} audit events from before" in done.stderr
    assert len(writes) > 1  # the server wrote while the prune ran
    failed = [text_of(result) for result in writes if result.is_error]
    assert failed == []
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT count(*) FROM audit_events WHERE actor = 'old'").fetchone() == (0,)
        created = connection.execute("SELECT count(*) FROM audit_events WHERE action = 'created'").fetchone()
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert created == (len(writes),)
    assert canary not in (tmp_path / "server.log").read_text(encoding="utf-8")


# --- a full disk under a serving server -------------------------------------------------------------

SMALL_DISK = "2M"
FULL = "database or disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``SMALL_DISK`` for this test alone, to fill: skipped unless this process may mount one.

    Root on a Debian machine may; in a container without CAP_SYS_ADMIN, or as any other user, it skips.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("only root may mount a tmpfs")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=60, check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte with one file, returned: deleting it frees the space again."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: on with smaller writes, to the last byte
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    assert os.statvfs(disk).f_bavail == 0
    return filler


async def test_a_full_disk_fails_each_write_saying_so_records_none_of_them_and_recovers_once_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_DATA_DIR=str(small_disk / "data"))
    token = create_token(env, "alice")
    values = [_random.token_urlsafe(24) for _ in range(4)]
    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=token) as alice:
            stored = await alice.call_tool("set_secret", {"server": "s", "key": "KEPT", "value": values[0]})
            filler = fill(small_disk)
            refused = [
                await alice.call_tool("set_secret", {"server": "s", "key": "NEW", "value": values[1]}),
                await alice.call_tool("set_secret", {"server": "s", "key": "KEPT", "value": values[2]}),
                await alice.call_tool("delete_secret", {"server": "s", "key": "KEPT"}),
                await alice.call_tool("request_secret", {"server": "s", "key": "LINKED"}),
            ]
            commands = [
                run_cli(env, "token", "create", "bob"),
                run_cli(env, "rotate"),
                run_cli(env, "prune-audit", "--older-than", "1"),
            ]
            listed = await alice.call_tool("list_secret_keys", {})
            filler.unlink()
            stored_after = await alice.call_tool(
                "set_secret", {"server": "s", "key": "NEW", "value": values[3]}
            )
            deleted_after = await alice.call_tool("delete_secret", {"server": "s", "key": "KEPT"})
        still_serving = deployment.process is not None and deployment.process.poll() is None

    assert not stored.is_error, text_of(stored)
    for result in refused:
        assert result.is_error
        assert FULL in text_of(result), text_of(result)
    for done in commands:
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith(FULL), done.stderr
        assert "Traceback" not in done.stderr
    assert not listed.is_error, text_of(listed)  # reads are still served
    assert listed.structured_content is not None
    assert [entry["key"] for entry in listed.structured_content["keys"]] == ["KEPT"]
    assert (stored_after.is_error, deleted_after.is_error) == (False, False)
    assert still_serving
    database = small_disk / "data" / "secrets.db"
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        events = connection.execute("SELECT action, key FROM audit_events WHERE actor = 'alice' ORDER BY id")
        # No event of a refused write, and none of a write made missing: each change with its event.
        assert events.fetchall() == [
            ("token-created", ""),
            ("created", "KEPT"),
            ("created", "NEW"),
            ("deleted", "KEPT"),
        ]
        assert connection.execute("SELECT key FROM user_secrets").fetchall() == [("NEW",)]
    verified = run_cli(env, "verify")
    assert verified.returncode == 0, verified.stderr
    outputs = "".join(text_of(result) for result in [stored, *refused, listed, stored_after, deleted_after])
    outputs += "".join(done.stdout + done.stderr for done in [*commands, verified])
    outputs += (tmp_path / "server.log").read_text(encoding="utf-8")
    for value in values:
        assert value not in outputs


# --- a disk that fails (EIO) under a serving server, and comes back ---------------------------------

# ioctl(FS_IOC_SHUTDOWN) = _IOR('X', 125, __u32): the filesystem answers every call after it with EIO, as a
# disk that went away does, until it is unmounted. Its flag 0 first writes out what is pending.
FS_IOC_SHUTDOWN = 0x8004587D
DISK_FAILED = "disk I/O error"


class LoopDisk:
    """An ext4 filesystem on a loop device of its own, mounted at ``mount_point`` with ``options``."""

    def __init__(self, device: str, mount_point: Path, options: str) -> None:
        self.device = device
        self.mount_point = mount_point
        self.options = options

    def mount(self) -> None:
        subprocess.run(
            ["mount", "-o", self.options, self.device, str(self.mount_point)],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def unmount(self) -> subprocess.CompletedProcess[str]:
        """``umount``, which fails ("target is busy") while a process holds a file of it open."""
        return subprocess.run(
            ["umount", str(self.mount_point)], capture_output=True, text=True, timeout=60, check=False
        )

    def mount_again(self) -> None:
        """Mount the filesystem afresh, after ``unmount``: skipped where another mount namespace holds it.

        One that another process made while the filesystem was mounted (``ip netns exec`` does) holds a copy
        of the mount, and with it the filesystem as it was (shut down): mounted again, it is that one.
        """
        self.mount()
        try:
            (self.mount_point / "mounted-again").touch()
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            pytest.skip("another mount namespace holds the filesystem shut down: it cannot be mounted afresh")

    def shut_down(self) -> None:
        """Make every later call on the filesystem fail with EIO, as a disk gone away does."""
        descriptor = os.open(self.mount_point, os.O_RDONLY)
        try:
            fcntl.ioctl(descriptor, FS_IOC_SHUTDOWN, struct.pack("I", 0))
        finally:
            os.close(descriptor)

    def fail(self) -> None:
        """Have ext4 record an error, as of a failed read of its metadata: ``errors=`` says what follows."""
        trigger = Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"this kernel has no {trigger}")
        trigger.write_text("1")


@pytest.fixture
def loop_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LoopDisk]:
    """A small ext4 image on a loop device, mounted for this test alone: skipped unless this process may.

    Root may where the kernel has loop devices; a container without them, or any other user, skips. The
    mount options are the test's parameter, if it gives one (indirectly).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("only root may attach a loop device")
    image = tmp_path / "disk.img"
    with image.open("wb") as sized:
        sized.truncate(8 * 1024 * 1024)
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=60, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device can be attached here: {attached.stderr.strip()}")
    disk = LoopDisk(attached.stdout.strip(), tmp_path / "disk", getattr(request, "param", "rw"))
    try:
        subprocess.run(["mkfs.ext4", "-q", disk.device], capture_output=True, timeout=60, check=True)
        disk.mount_point.mkdir()
        disk.mount()
        yield disk
    finally:
        disk.unmount()
        subprocess.run(["losetup", "--detach", disk.device], capture_output=True, timeout=60, check=False)


def _refusal(deployment: Deployment, http: httpx2.Client, token: str) -> str:
    """Why the server refuses a read over HTTP: the token check fails first (503), and its log says why."""
    answer = http.get(f"{deployment.base_url}/secrets?server=s", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 503, answer.text
    [why] = [line for line in deployment.log().splitlines() if "API token could not be checked" in line]
    return why


@pytest.mark.parametrize("transport", ["streamable-http", "stdio"])
async def test_a_failed_disk_fails_each_call_saying_so_lets_go_of_the_file_and_serves_again_once_back(
    loop_disk: LoopDisk, tmp_path: Path, transport: str
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_DATA_DIR=str(loop_disk.mount_point / "data"))
    token = create_token(env, "alice")
    values = [_random.token_urlsafe(24) for _ in range(3)]
    log = tmp_path / "server.log"
    with (
        contextlib.nullcontext(Deployment("stdio", env, log))
        if transport == "stdio"
        else serving(env, transport, log) as deployment,
        httpx2.Client(trust_env=False, timeout=10) as http,
    ):
        async with deployment.connect(token=token) as alice:
            stored = await alice.call_tool("set_secret", {"server": "s", "key": "KEPT", "value": values[0]})
            loop_disk.shut_down()
            refused = await alice.call_tool("set_secret", {"server": "s", "key": "LOST", "value": values[1]})
            refusals = [text_of(refused)]
            if transport == "stdio":
                refusals.append(text_of(await alice.call_tool("list_secret_keys", {"server": "s"})))
            else:
                refusals.append(_refusal(deployment, http, token))
                assert http.get(f"{deployment.base_url}/healthz").status_code == 503
            listed_while_failed = run_cli(env, "list", "--user", "alice")
            # The server holds no file of the failed filesystem open: it can be unmounted, checked, mounted.
            unmounted = loop_disk.unmount()
            assert unmounted.returncode == 0, unmounted.stderr
            loop_disk.mount_again()
            stored_after = await alice.call_tool(
                "set_secret", {"server": "s", "key": "NEW", "value": values[2]}
            )
            listed = await alice.call_tool("list_secret_keys", {"server": "s"})
            if deployment.base_url is not None:
                assert http.get(f"{deployment.base_url}/healthz").status_code == 200

    assert not stored.is_error, text_of(stored)
    assert refused.is_error
    for refusal in refusals:
        assert DISK_FAILED in refusal, refusal
        assert "malformed" not in refusal
    assert listed_while_failed.returncode == 1
    # Not a permission: the disk failed.
    assert "reading the file fails (Input/output error)" in listed_while_failed.stderr, (
        listed_while_failed.stderr
    )
    assert "Traceback" not in listed_while_failed.stderr
    assert not stored_after.is_error, text_of(stored_after)
    assert listed.structured_content is not None
    assert [entry["key"] for entry in listed.structured_content["keys"]] == ["KEPT", "NEW"]
    with closing(sqlite3.connect(loop_disk.mount_point / "data" / "secrets.db")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        keys = connection.execute("SELECT key FROM user_secrets ORDER BY key").fetchall()
    assert keys == [("KEPT",), ("NEW",)]
    outputs = "".join([*refusals, text_of(stored), text_of(stored_after), text_of(listed)])
    outputs += listed_while_failed.stdout + listed_while_failed.stderr + log.read_text(encoding="utf-8")
    for value in values:
        assert value not in outputs


@pytest.mark.parametrize("loop_disk", ["rw,errors=remount-ro"], indirect=True)
async def test_a_disk_made_read_only_by_an_error_refuses_writes_saying_so_and_serves_reads(
    loop_disk: LoopDisk, tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, MCP_SECRETS_DATA_DIR=str(loop_disk.mount_point / "data"))
    token = create_token(env, "alice")
    values = [_random.token_urlsafe(24) for _ in range(3)]
    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        async with deployment.connect(token=token) as alice:
            stored = await alice.call_tool("set_secret", {"server": "s", "key": "KEPT", "value": values[0]})
            os.sync()  # written back, as a change made some seconds before the error is
            loop_disk.fail()
            refused = [
                await alice.call_tool("set_secret", {"server": "s", "key": "LOST", "value": values[1]}),
                await alice.call_tool("list_secret_keys", {"server": "s"}),
                await alice.call_tool("set_secret", {"server": "s", "key": "LOST", "value": values[2]}),
                await alice.call_tool("list_secret_keys", {"server": "s"}),
            ]

    assert not stored.is_error, text_of(stored)
    first, listed, again, listed_again = refused
    assert first.is_error
    assert DISK_FAILED in text_of(first), text_of(first)
    assert again.is_error
    assert "malformed" not in text_of(again)
    for result in (listed, listed_again):  # reads are still served
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        assert [entry["key"] for entry in result.structured_content["keys"]] == ["KEPT"]
    outputs = "".join(text_of(result) for result in [stored, *refused]) + deployment.log()
    for value in values:
        assert value not in outputs
