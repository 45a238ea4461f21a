"""Key rotation on every backend: re-encrypt to the active key, resumably, without losing a write."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import mongomock
import pytest

from conftest import new_canary
from mcp_secrets.crypto import SecretEncryptor, key_id_for
from mcp_secrets.errors import StoreUnavailableError
from mcp_secrets.rotation import RotationReport, rotate, verify
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import SecretRecord, SecretStore
from mcp_secrets.store.mongo import MongoStore
from mcp_secrets.store.sqlite import SQLiteStore
from test_crypto import fresh_master_key, legacy_ciphertext
from test_store import alter_stored

Record = tuple[str, str, str]

# Whole milliseconds: a BSON date keeps no finer, and these tests run on every backend.
T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=timezone.utc)
UNDER_KEY_A: tuple[Record, ...] = (
    ("alice", "github", "TOKEN"),
    ("alice", "github", "USER"),
    ("alice", "slack", "TOKEN"),
    ("bob", "github", "TOKEN"),
)
LEGACY: tuple[Record, ...] = (("alice", "linear", "OLD"), ("carol", "github", "TOKEN"))
EVERY_RECORD = len(UNDER_KEY_A) + len(LEGACY)


@pytest.fixture
def legacy_key() -> str:
    """A key string of the original design: random, so no message can hold it by chance."""
    return new_canary()


@pytest.fixture
def key_b() -> bytes:
    """The new master key the rotation moves to; the ``master_key`` fixture (key A) wrote the records."""
    return fresh_master_key()


@pytest.fixture
def values(secrets: Secrets, legacy_key: str) -> dict[Record, str]:
    """Records under key A written through ``secrets``, and legacy ones put straight into the store."""
    written = {record: new_canary() for record in (*UNDER_KEY_A, *LEGACY)}
    for username, server, key in UNDER_KEY_A:
        secrets.set_secret(username, server, key, written[username, server, key])
    for username, server, key in LEGACY:
        old = legacy_ciphertext(written[username, server, key], legacy_key)
        secrets.store.put_secret(username, server, key, old, T0)
    return written


@pytest.fixture
def rotating(secrets: Secrets, master_key: bytes, key_b: bytes, legacy_key: str) -> Secrets:
    """The service as an operator rotating to key B runs it: keys [B, A] and the legacy key."""
    return Secrets(secrets.store, SecretEncryptor([key_b, master_key], legacy_key=legacy_key))


def stored(store: SecretStore) -> dict[Record, SecretRecord]:
    return {(r.username, r.server, r.key): r for r in store.scan_secrets(None, 10_000)}


def ciphertexts(store: SecretStore) -> dict[Record, str]:
    return {record: found.value for record, found in stored(store).items()}


def key_ids(secrets: Secrets) -> dict[Record, str]:
    return {
        record: secrets.encryptor.key_id_of(value) for record, value in ciphertexts(secrets.store).items()
    }


def decrypted(store: SecretStore, encryptor: SecretEncryptor) -> dict[Record, str]:
    """Every record decrypted with ``encryptor``, read without recording a use."""
    return {
        (username, server, key): encryptor.decrypt(value, username=username, server=server, key=key)
        for (username, server, key), value in ciphertexts(store).items()
    }


def outcome(report: RotationReport) -> tuple[int, int, int, int, int]:
    return (
        report.scanned,
        report.rewrapped,
        report.already_current,
        report.changed_meanwhile,
        len(report.failed),
    )


# --- re-encrypting -------------------------------------------------------------------------------


def test_rotation_re_encrypts_every_record_so_the_new_key_alone_reads_them(
    rotating: Secrets, values: dict[Record, str], key_b: bytes
) -> None:
    report = rotate(rotating)

    assert report.active_key_id == key_id_for(key_b)
    assert outcome(report) == (EVERY_RECORD, EVERY_RECORD, 0, 0, 0)
    assert set(key_ids(rotating).values()) == {key_id_for(key_b)}
    assert decrypted(rotating.store, SecretEncryptor([key_b])) == values


def test_second_rotation_re_encrypts_nothing_and_leaves_ciphertexts_alone(
    rotating: Secrets, values: dict[Record, str]
) -> None:
    rotate(rotating)
    after_first = ciphertexts(rotating.store)

    again = rotate(rotating)

    assert outcome(again) == (EVERY_RECORD, 0, EVERY_RECORD, 0, 0)
    assert ciphertexts(rotating.store) == after_first
    assert decrypted(rotating.store, rotating.encryptor) == values


@pytest.mark.parametrize(
    ("only_legacy", "would_rewrap"), [(False, EVERY_RECORD), (True, len(LEGACY))], ids=["all", "legacy"]
)
def test_dry_run_counts_and_changes_nothing(
    rotating: Secrets, values: dict[Record, str], only_legacy: bool, would_rewrap: int
) -> None:
    before = ciphertexts(rotating.store)
    events_before = rotating.list_events(None, limit=1000)

    report = rotate(rotating, dry_run=True, only_legacy=only_legacy)

    assert outcome(report) == (EVERY_RECORD, would_rewrap, EVERY_RECORD - would_rewrap, 0, 0)
    assert ciphertexts(rotating.store) == before
    assert rotating.list_events(None, limit=1000) == events_before
    assert decrypted(rotating.store, rotating.encryptor) == values


def test_only_legacy_migrates_legacy_records_and_leaves_the_others_under_their_key(
    secrets: Secrets, values: dict[Record, str], master_key: bytes, key_b: bytes, legacy_key: str
) -> None:
    migrating = Secrets(secrets.store, SecretEncryptor([key_b, master_key], legacy_key=legacy_key))

    report = rotate(migrating, only_legacy=True)

    assert outcome(report) == (EVERY_RECORD, len(LEGACY), len(UNDER_KEY_A), 0, 0)
    assert key_ids(migrating) == {
        **dict.fromkeys(UNDER_KEY_A, key_id_for(master_key)),
        **dict.fromkeys(LEGACY, key_id_for(key_b)),
    }
    # The legacy key is no longer needed.
    assert decrypted(secrets.store, SecretEncryptor([key_b, master_key])) == values


def test_a_legacy_record_of_an_empty_value_is_migrated_as_the_empty_value(
    rotating: Secrets, master_key: bytes, key_b: bytes, legacy_key: str
) -> None:
    # "iv:authTag:", the original design's empty value: neither left behind nor called unreadable.
    rotating.store.put_secret("erin", "github", "EMPTY", legacy_ciphertext("", legacy_key), T0)

    report = rotate(rotating, only_legacy=True)

    assert (report.rewrapped, report.failed, report.unreadable) == (1, [], [])
    assert decrypted(rotating.store, SecretEncryptor([key_b])) == {("erin", "github", "EMPTY"): ""}


def test_rotation_keeps_every_records_timestamps(
    store: SecretStore, master_key: bytes, key_b: bytes, legacy_key: str
) -> None:
    now = [T0]
    writer = Secrets(store, SecretEncryptor([master_key]), clock=lambda: now[0])
    writer.set_secret("alice", "github", "TOKEN", new_canary())
    now[0] = T0 + timedelta(minutes=1)
    writer.set_secret("alice", "github", "TOKEN", new_canary())
    writer.set_secret("bob", "github", "TOKEN", new_canary())
    store.put_secret("carol", "github", "TOKEN", legacy_ciphertext(new_canary(), legacy_key), T0)
    now[0] = T0 + timedelta(minutes=2)
    writer.get_secrets("alice", "github")
    writer.close()  # its use is written before the records are read straight from the store
    before = {record: dataclasses.replace(found, value="") for record, found in stored(store).items()}
    now[0] = T0 + timedelta(hours=1)
    rotating = Secrets(
        store, SecretEncryptor([key_b, master_key], legacy_key=legacy_key), clock=lambda: now[0]
    )

    assert rotate(rotating).rewrapped == 3

    after = {record: dataclasses.replace(found, value="") for record, found in stored(store).items()}
    assert after == before
    assert before["alice", "github", "TOKEN"].last_used_at == T0 + timedelta(minutes=2)


# --- records it cannot re-encrypt ----------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_record_under_an_unconfigured_key_is_reported_by_key_id_and_the_others_rotate(
    rotating: Secrets, values: dict[Record, str], key_b: bytes, dry_run: bool
) -> None:
    unknown_key = fresh_master_key()
    value = new_canary()
    Secrets(rotating.store, SecretEncryptor([unknown_key])).set_secret("bob", "linear", "TOKEN", value)
    lost = ciphertexts(rotating.store)["bob", "linear", "TOKEN"]

    report = rotate(rotating, dry_run=dry_run)

    assert outcome(report) == (EVERY_RECORD + 1, EVERY_RECORD, 0, 0, 1)
    [failure] = report.failed
    assert (failure.username, failure.server, failure.key) == ("bob", "linear", "TOKEN")
    assert key_id_for(unknown_key) in failure.reason
    assert value not in failure.reason
    assert ciphertexts(rotating.store)["bob", "linear", "TOKEN"] == lost
    if not dry_run:
        assert {
            record: key for record, key in key_ids(rotating).items() if record in values
        } == dict.fromkeys(values, key_id_for(key_b))


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_legacy_record_without_a_legacy_key_is_reported_failed_by_run_and_dry_run_alike(
    secrets: Secrets, values: dict[Record, str], master_key: bytes, key_b: bytes, dry_run: bool
) -> None:
    # A dry run is how an operator checks a rotation will go through: it must predict these failures.
    no_legacy_key = Secrets(secrets.store, SecretEncryptor([key_b, master_key]))

    report = rotate(no_legacy_key, dry_run=dry_run)

    assert outcome(report) == (EVERY_RECORD, len(UNDER_KEY_A), 0, 0, len(LEGACY))
    assert [(f.username, f.server, f.key) for f in report.failed] == sorted(LEGACY)
    assert all(values[record] not in failure.reason for record in values for failure in report.failed)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_records_that_do_not_decrypt_are_reported_failed_by_run_and_dry_run_alike(
    secrets: Secrets, values: dict[Record, str], master_key: bytes, key_b: bytes, dry_run: bool
) -> None:
    # A mistyped legacy key, and a record altered in the store: both have a readable form, but
    # neither decrypts, and a dry run that counted them as re-encryptable would promise a clean run.
    altered = UNDER_KEY_A[0]
    value = ciphertexts(secrets.store)[altered]
    secrets.store.replace_value(*altered, value, value[:-2] + ("AA" if value[-2:] != "AA" else "BA"))
    wrong_legacy_key = Secrets(secrets.store, SecretEncryptor([key_b, master_key], legacy_key=new_canary()))

    report = rotate(wrong_legacy_key, dry_run=dry_run)

    assert outcome(report) == (EVERY_RECORD, len(UNDER_KEY_A) - 1, 0, 0, len(LEGACY) + 1)
    assert [(f.username, f.server, f.key) for f in report.failed] == sorted([*LEGACY, altered])
    assert all(values[record] not in failure.reason for record in values for failure in report.failed)


@pytest.mark.parametrize("with_legacy_key", [False, True], ids=["no-legacy-key", "legacy-key"])
@pytest.mark.parametrize(
    "how",
    [
        {"only_legacy": False, "dry_run": False},
        {"only_legacy": False, "dry_run": True},
        {"only_legacy": True, "dry_run": False},
        {"only_legacy": True, "dry_run": True},
    ],
    ids=["rotate", "rotate-dry-run", "migrate-legacy", "migrate-legacy-dry-run"],
)
def test_a_record_in_no_known_format_is_reported_as_such_by_run_and_dry_run_alike(
    rotating: Secrets, master_key: bytes, key_b: bytes, with_legacy_key: bool, how: dict[str, bool]
) -> None:
    # Not "in the legacy format": an operator told that would look for a legacy key that cannot help.
    rotating.store.put_secret("bob", "linear", "TOKEN", "damaged: not a ciphertext", T0)
    encryptor = rotating.encryptor if with_legacy_key else SecretEncryptor([key_b, master_key])

    report = rotate(Secrets(rotating.store, encryptor), **how)

    # Migrating, it is no legacy record, so no failure: it is reported apart, as unreadable.
    found, other = (
        (report.unreadable, report.failed) if how["only_legacy"] else (report.failed, report.unreadable)
    )
    [failure] = [f for f in found if (f.username, f.server, f.key) == ("bob", "linear", "TOKEN")]
    assert "not in a ciphertext format mcp-secrets can read" in failure.reason
    assert "legacy" not in failure.reason
    assert ("bob", "linear", "TOKEN") not in [(f.username, f.server, f.key) for f in other]


@pytest.mark.usefixtures("values")
@pytest.mark.parametrize("batch_size", [1, 2, 500])
@pytest.mark.parametrize("field", ["value", "updated_at"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_record_another_tool_left_unreadable_is_reported_and_the_others_rotate(
    rotating: Secrets, key_b: bytes, batch_size: int, field: str, dry_run: bool
) -> None:
    # Not a stop at the first batch holding it: a run would stop there again, each time it is run.
    broken = ("alice", "slack", "TOKEN")
    canary = new_canary()
    sqlite = isinstance(rotating.store, SQLiteStore)
    held = {"value": canary.encode() if sqlite else [canary], "updated_at": canary}[field]
    alter_stored(
        rotating.store,
        "user_secrets",
        dict(zip(("username", "server", "key"), broken, strict=True)),
        field,
        held,
    )

    report = rotate(rotating, dry_run=dry_run, batch_size=batch_size)

    assert outcome(report) == (EVERY_RECORD, EVERY_RECORD - 1, 0, 0, 1)
    [failure] = report.failed
    assert (failure.username, failure.server, failure.key) == broken
    assert f"cannot be read (its field {field} holds " in failure.reason
    assert (canary in failure.reason) is False
    others = [("alice", "github"), ("alice", "linear"), ("bob", "github"), ("carol", "github")]
    readable = [record for where in others for record in rotating.store.find_secrets(*where)]
    assert len(readable) == EVERY_RECORD - 1
    wanted = key_id_for(key_b) if not dry_run else None
    if wanted is not None:
        assert {rotating.encryptor.key_id_of(record.value) for record in readable} == {wanted}


# --- writes racing the rotation ------------------------------------------------------------------

RACED: Record = ("alice", "github", "USER")


@pytest.mark.parametrize("change", ["updated", "deleted"])
def test_record_changed_between_scan_and_swap_is_counted_and_keeps_the_newer_state(
    rotating: Secrets,
    values: dict[Record, str],
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    store = rotating.store
    swap = store.replace_value
    newer = new_canary()

    def write_first(username: str, server: str, key: str, old: str, new: str) -> bool:
        if (username, server, key) == RACED:
            # The server, already restarted with [B, A], writes this record after rotation read it.
            if change == "updated":
                rotating.set_secret(*RACED, newer)
            else:
                rotating.delete_secret(*RACED)
        return swap(username, server, key, old, new)

    monkeypatch.setattr(store, "replace_value", write_first)

    report = rotate(rotating)

    assert outcome(report) == (EVERY_RECORD, EVERY_RECORD - 1, 0, 1, 0)
    expected = {record: value for record, value in values.items() if record != RACED}
    if change == "updated":
        expected[RACED] = newer
    assert decrypted(store, rotating.encryptor) == expected


def test_record_rewritten_with_the_active_key_mid_run_is_left_as_it_is(
    rotating: Secrets, values: dict[Record, str]
) -> None:
    last = max(values)
    newer = new_canary()

    def write_last_record(done: int, _total: int) -> None:
        if done == 1:
            rotating.set_secret(*last, newer)

    report = rotate(rotating, batch_size=1, on_progress=write_last_record)

    assert outcome(report) == (EVERY_RECORD, EVERY_RECORD - 1, 1, 0, 0)
    assert decrypted(rotating.store, rotating.encryptor) == {**values, last: newer}


# --- batches and progress ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, EVERY_RECORD, 100])
def test_batch_size_does_not_change_the_result(
    rotating: Secrets, values: dict[Record, str], key_b: bytes, batch_size: int
) -> None:
    report = rotate(rotating, batch_size=batch_size)

    assert outcome(report) == (EVERY_RECORD, EVERY_RECORD, 0, 0, 0)
    assert set(key_ids(rotating).values()) == {key_id_for(key_b)}
    assert decrypted(rotating.store, SecretEncryptor([key_b])) == values


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_refused_before_anything_changes(
    rotating: Secrets, values: dict[Record, str], batch_size: int
) -> None:
    # SQLite reads LIMIT 0 as "no rows" and MongoDB as "no limit": either would misreport a rotation.
    before = ciphertexts(rotating.store)

    with pytest.raises(ValueError, match="batch"):
        rotate(rotating, batch_size=batch_size)

    assert ciphertexts(rotating.store) == before
    assert decrypted(rotating.store, rotating.encryptor) == values


@pytest.mark.parametrize("batch_size", [1, 2, 4, EVERY_RECORD, 100])
def test_on_progress_counts_up_to_the_total_a_batch_at_a_time(
    rotating: Secrets, values: dict[Record, str], batch_size: int
) -> None:
    calls: list[tuple[int, int]] = []

    rotate(rotating, batch_size=batch_size, on_progress=lambda done, total: calls.append((done, total)))

    expected_done = [*range(batch_size, len(values), batch_size), len(values)]
    assert calls == [(done, len(values)) for done in expected_done]


def test_rotation_of_an_empty_store_reports_nothing_to_do(rotating: Secrets) -> None:
    report = rotate(rotating)

    assert outcome(report) == (0, 0, 0, 0, 0)


# --- verifying -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2, 500])
def test_verify_counts_every_record_that_decrypts_by_key_id_and_changes_nothing(
    rotating: Secrets, values: dict[Record, str], master_key: bytes, key_b: bytes, batch_size: int
) -> None:
    rotating.set_secret("dave", "github", "TOKEN", new_canary())  # under key B, the active one
    before = stored(rotating.store)

    report = verify(rotating, batch_size=batch_size)

    assert report.scanned == EVERY_RECORD + 1
    assert report.readable == {key_id_for(key_b): 1, key_id_for(master_key): len(UNDER_KEY_A), "legacy": 2}
    assert report.failed == []
    assert stored(rotating.store) == before


def test_verify_names_each_record_that_does_not_decrypt_even_under_the_active_key(
    secrets: Secrets, values: dict[Record, str], master_key: bytes, key_b: bytes
) -> None:
    # What a rotation's dry run passes over: it reads no record already under the active key.
    altered = UNDER_KEY_A[0]
    value = ciphertexts(secrets.store)[altered]
    secrets.store.replace_value(*altered, value, value[:-2] + ("AA" if value[-2:] != "AA" else "BA"))
    secrets.store.put_secret("bob", "linear", "TOKEN", f"v1:{key_id_for(key_b)}:{'A' * 60}", T0)
    assert outcome(rotate(secrets, dry_run=True))[1:] == (0, len(UNDER_KEY_A), 0, len(LEGACY) + 1)

    report = verify(secrets)

    assert report.readable == {key_id_for(master_key): len(UNDER_KEY_A) - 1}
    failures = {(f.username, f.server, f.key): f.reason for f in report.failed}
    assert sorted(failures) == sorted([altered, ("bob", "linear", "TOKEN"), *LEGACY])
    assert "it was altered, or copied from another record" in failures[altered]
    assert f"master key {key_id_for(key_b)}, which is not configured" in failures["bob", "linear", "TOKEN"]
    assert "MCP_SECRETS_LEGACY_KEY is not set" in failures[LEGACY[0]]
    assert not any(value in reason for value in values.values() for reason in failures.values())


@pytest.mark.usefixtures("values")
def test_verify_passes_over_a_record_the_store_cannot_read_and_names_it(rotating: Secrets) -> None:
    broken = ("alice", "slack", "TOKEN")
    canary = new_canary()
    held = canary.encode() if isinstance(rotating.store, SQLiteStore) else [canary]
    alter_stored(
        rotating.store,
        "user_secrets",
        dict(zip(("username", "server", "key"), broken, strict=True)),
        "value",
        held,
    )

    report = verify(rotating, batch_size=2)

    assert (report.scanned, report.readable.total()) == (EVERY_RECORD, EVERY_RECORD - 1)
    [failure] = report.failed
    assert (failure.username, failure.server, failure.key) == broken
    assert (canary in failure.reason) is False


def test_verify_is_recorded_in_the_audit_trail_with_its_counts_and_never_a_value(
    rotating: Secrets, values: dict[Record, str]
) -> None:
    verify(rotating)

    newest = rotating.list_events(None, limit=1)[0]
    assert (newest.actor, newest.action, newest.transport) == ("(operator)", "verified", "cli")
    assert newest.detail == f"{EVERY_RECORD} of {EVERY_RECORD} records decrypt, 0 do not"
    for event in rotating.list_events(None, limit=1000):
        assert not any(
            value in str(field) for value in values.values() for field in dataclasses.astuple(event)
        )
    assert all(info.last_used_at is None for info in rotating.list_secret_keys("alice"))  # no value handed on


# --- the audit trail -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_legacy", "action"), [(False, "rotated"), (True, "migrated-legacy")], ids=["rotate", "migrate"]
)
def test_rotation_is_recorded_in_the_audit_trail_without_any_value(
    rotating: Secrets, values: dict[Record, str], legacy_key: str, only_legacy: bool, action: str
) -> None:
    report = rotate(rotating, only_legacy=only_legacy)

    newest = rotating.list_events(None, limit=1)[0]
    assert (newest.action, newest.transport) == (action, "cli")
    assert f"{report.rewrapped} re-encrypted to key {report.active_key_id}" in newest.detail
    hidden = [*values.values(), legacy_key, *ciphertexts(rotating.store).values()]
    for event in rotating.list_events(None, limit=1000):
        for field in dataclasses.astuple(event):
            assert not any(text in str(field) for text in hidden), event


@pytest.mark.parametrize(
    ("stop", "said"),
    [
        pytest.param(StoreUnavailableError("the store is unavailable"), "an error", id="error"),
        pytest.param(KeyboardInterrupt(), "SIGINT", id="ctrl-c"),  # SIGTERM, SIGHUP: test_rotate_cli.py
    ],
)
def test_a_rotation_stopped_by_an_error_or_ctrl_c_still_records_what_it_re_encrypted(
    rotating: Secrets,
    values: dict[Record, str],
    monkeypatch: pytest.MonkeyPatch,
    stop: BaseException,
    said: str,
) -> None:
    scan = rotating.store.scan_secrets
    scans = {"count": 0}

    def failing_after_the_first_batch(after: Record | None, limit: int) -> list[SecretRecord]:
        scans["count"] += 1
        if scans["count"] > 1:
            raise stop
        return scan(after, limit)

    monkeypatch.setattr(rotating.store, "scan_secrets", failing_after_the_first_batch)

    with pytest.raises(type(stop)):
        rotate(rotating, batch_size=2)

    [event] = [event for event in rotating.list_events(None, limit=100) if event.action == "rotated"]
    assert event.detail.startswith("2 re-encrypted to key ")
    assert event.detail.endswith(f", then stopped by {said}")


def test_a_dry_run_or_a_rotation_that_changed_nothing_before_its_error_records_nothing(
    rotating: Secrets, values: dict[Record, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(after: Record | None, limit: int) -> list[SecretRecord]:
        raise StoreUnavailableError("the store is unavailable")

    monkeypatch.setattr(rotating.store, "scan_secrets", failing)

    for dry_run in (False, True):
        with pytest.raises(StoreUnavailableError):
            rotate(rotating, dry_run=dry_run)

    assert [event for event in rotating.list_events(None, limit=100) if event.action == "rotated"] == []


def test_migrate_legacy_reads_mongodb_documents_the_original_design_wrote_without_times(
    master_key: bytes, legacy_key: str
) -> None:
    # The original design wrote {username, server, key, value} and nothing else: no created_at, updated_at.
    value = new_canary()
    client = mongomock.MongoClient(tz_aware=True)
    original = {"username": "alice", "server": "github", "key": "TOKEN"}
    client["db"]["user_secrets"].insert_one({**original, "value": legacy_ciphertext(value, legacy_key)})
    store = MongoStore(client, "db")
    migrating = Secrets(store, SecretEncryptor([master_key], legacy_key=legacy_key))
    try:
        listed = migrating.list_secret_keys("alice")
        assert [(info.server, info.key) for info in listed] == [("github", "TOKEN")]
        assert migrating.get_secrets("alice", "github") == {"TOKEN": value}

        report = rotate(migrating, only_legacy=True)

        assert outcome(report) == (1, 1, 0, 0, 0)
        assert decrypted(store, SecretEncryptor([master_key])) == {("alice", "github", "TOKEN"): value}
    finally:
        migrating.close()
        store.close()


def test_original_design_documents_twice_for_one_record_are_named_as_the_reason_the_store_cannot_open(
    legacy_key: str,
) -> None:
    # The original design had no unique index: two saves at once could leave two documents for one key.
    client = mongomock.MongoClient(tz_aware=True)
    original = {"username": "alice", "server": "github", "key": "TOKEN"}
    for _ in range(2):
        value = legacy_ciphertext(new_canary(), legacy_key)
        client["db"]["user_secrets"].insert_one({**original, "value": value})

    with pytest.raises(StoreUnavailableError) as refused:
        MongoStore(client, "db")

    message = str(refused.value)
    assert "more than one document for one (username, server, key)" in message
    assert "user_secrets" in message
