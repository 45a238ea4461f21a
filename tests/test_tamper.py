"""Tampered and swapped ciphertexts: every one is refused with DecryptionError, and no plaintext comes out.

1,000 records with random values and random (username, server, key) are
stored, then damaged in the store, and read back through ``Secrets.get_secrets``
on SQLite; the same damage is also checked against the encryptor directly.
Every count is exact: all of them refused, none decrypted.
"""

from __future__ import annotations

import base64
import functools
import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mcp_secrets.crypto import SecretEncryptor
from mcp_secrets.secrets import Secrets

RECORDS = 1000
SEED = 20250314  # fixed, so that a failure names the same record on every run
NAME_ALPHABET = string.ascii_letters + string.digits + "_.-"
ALL_REFUSED = Counter({"DecryptionError": RECORDS})


@dataclass(frozen=True)
class Record:
    """One stored secret: whose, which, and the value that was written."""

    username: str
    server: str
    key: str
    value: str

    @property
    def names(self) -> dict[str, str]:
        return {"username": self.username, "server": self.server, "key": self.key}


def _name(rng: random.Random, prefix: str, index: int) -> str:
    # The index makes every (username, server) pair distinct, so each read touches one record only.
    tail = "".join(rng.choices(NAME_ALPHABET, k=rng.randint(1, 20)))
    return f"{prefix}{index}{tail}"


def _value(rng: random.Random) -> str:
    """Random text: mostly printable, with some multi-byte characters."""
    alphabet = string.printable + "éß€漢字😀"
    return "".join(rng.choices(alphabet, k=rng.randint(1, 80)))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.fixture
def records(sqlite_secrets: Secrets, rng: random.Random) -> list[Record]:
    """1,000 records stored through ``Secrets``, each checked to read back before any damage."""
    made = []
    for index in range(RECORDS):
        record = Record(_name(rng, "u", index), _name(rng, "s", index), _name(rng, "k", index), _value(rng))
        sqlite_secrets.set_secret(record.username, record.server, record.key, record.value)
        made.append(record)
    readable = sum(
        sqlite_secrets.get_secrets(record.username, record.server) == {record.key: record.value}
        for record in made
    )
    assert readable == RECORDS
    return made


def stored_ciphertext(secrets: Secrets, record: Record) -> str:
    (stored,) = secrets.store.find_secrets(record.username, record.server)
    return stored.value


def replace_ciphertext(secrets: Secrets, record: Record, new: str) -> None:
    old = stored_ciphertext(secrets, record)
    assert secrets.store.replace_value(record.username, record.server, record.key, old, new)


def _outcome(attempt: Callable[[], object]) -> str:
    try:
        returned = attempt()
    except Exception as exc:
        return type(exc).__name__
    return "plaintext" if returned else "nothing"


def outcomes(attempts: list[Callable[[], object]]) -> Counter[str]:
    """How many attempts raised each exception type, returned a plaintext, or returned nothing."""
    return Counter(_outcome(attempt) for attempt in attempts)


# --- damage -----------------------------------------------------------------------------------------


def _altered_character(ciphertext: str, rng: random.Random) -> str:
    """The stored text with one character, at a random position, replaced by another byte value."""
    position = rng.randrange(len(ciphertext))
    replacement = rng.choice([chr(byte) for byte in range(256) if chr(byte) != ciphertext[position]])
    return ciphertext[:position] + replacement + ciphertext[position + 1 :]


def _payload(ciphertext: str) -> tuple[str, bytes]:
    """Split ``v1:<key id>:<base64url payload>`` into its prefix and decoded payload bytes."""
    version, key_id, encoded = ciphertext.split(":")
    return f"{version}:{key_id}:", base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def _encode(prefix: str, payload: bytes) -> str:
    return prefix + base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def _flipped_byte(ciphertext: str, rng: random.Random) -> str:
    """The ciphertext with one byte of its decoded payload (nonce, ciphertext or tag) changed."""
    prefix, payload = _payload(ciphertext)
    position = rng.randrange(len(payload))
    changed = bytearray(payload)
    changed[position] ^= rng.randint(1, 255)
    return _encode(prefix, bytes(changed))


DAMAGE = {
    "one-character-of-the-stored-text": _altered_character,
    "one-byte-of-the-decoded-payload": _flipped_byte,
}


# --- through Secrets.get_secrets on SQLite ----------------------------------------------------------


def _reads(secrets: Secrets, records: list[Record]) -> list[Callable[[], object]]:
    return [functools.partial(secrets.get_secrets, record.username, record.server) for record in records]


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_every_altered_ciphertext_is_refused_by_get_secrets(
    sqlite_secrets: Secrets, records: list[Record], rng: random.Random, damage: Callable[..., str]
) -> None:
    for record in records:
        replace_ciphertext(sqlite_secrets, record, damage(stored_ciphertext(sqlite_secrets, record), rng))

    seen = outcomes(_reads(sqlite_secrets, records))

    assert seen == ALL_REFUSED
    assert seen["plaintext"] == 0


def _cycle(count: int, rng: random.Random) -> dict[int, int]:
    """For each index, another one to take from: a random cycle through all, so nobody keeps its own."""
    order = list(range(count))
    rng.shuffle(order)
    return {index: order[(place + 1) % count] for place, index in enumerate(order)}


def test_every_ciphertext_moved_to_another_record_is_refused_by_get_secrets(
    sqlite_secrets: Secrets, records: list[Record], rng: random.Random
) -> None:
    ciphertexts = [stored_ciphertext(sqlite_secrets, record) for record in records]
    for index, source in _cycle(RECORDS, rng).items():
        replace_ciphertext(sqlite_secrets, records[index], ciphertexts[source])

    seen = outcomes(_reads(sqlite_secrets, records))

    assert seen == ALL_REFUSED
    assert seen["plaintext"] == 0


# --- through the encryptor directly -----------------------------------------------------------------


@pytest.fixture
def sealed(encryptor: SecretEncryptor, rng: random.Random) -> list[tuple[Record, str]]:
    """1,000 records and their ciphertexts, made by the encryptor alone, each checked to decrypt."""
    made = []
    for index in range(RECORDS):
        record = Record(_name(rng, "u", index), _name(rng, "s", index), _name(rng, "k", index), _value(rng))
        made.append((record, encryptor.encrypt(record.value, **record.names)))
    decrypted = sum(
        encryptor.decrypt(ciphertext, **record.names) == record.value for record, ciphertext in made
    )
    assert decrypted == RECORDS
    return made


def _decrypts(encryptor: SecretEncryptor, pairs: list[tuple[Record, str]]) -> list[Callable[[], object]]:
    return [functools.partial(encryptor.decrypt, ciphertext, **record.names) for record, ciphertext in pairs]


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_every_altered_ciphertext_is_refused_by_the_encryptor(
    encryptor: SecretEncryptor,
    sealed: list[tuple[Record, str]],
    rng: random.Random,
    damage: Callable[..., str],
) -> None:
    damaged = [(record, damage(ciphertext, rng)) for record, ciphertext in sealed]

    seen = outcomes(_decrypts(encryptor, damaged))

    assert seen == ALL_REFUSED
    assert seen["plaintext"] == 0


def test_a_change_to_any_byte_of_any_payload_is_refused_by_the_encryptor(
    encryptor: SecretEncryptor, sealed: list[tuple[Record, str]], rng: random.Random
) -> None:
    """Not one random byte per record but every byte position in turn: nonce, ciphertext and tag."""
    damaged = []
    for record, ciphertext in sealed:
        prefix, payload = _payload(ciphertext)
        for position in range(len(payload)):
            changed = bytearray(payload)
            changed[position] ^= rng.randint(1, 255)
            damaged.append((record, _encode(prefix, bytes(changed))))

    seen = outcomes(_decrypts(encryptor, damaged))

    positions = sum(len(_payload(ciphertext)[1]) for _, ciphertext in sealed)
    assert positions > RECORDS * 28  # at least a nonce, a tag and one byte each
    assert seen == Counter({"DecryptionError": positions})
    assert seen["plaintext"] == 0


def test_every_ciphertext_moved_to_another_record_is_refused_by_the_encryptor(
    encryptor: SecretEncryptor, sealed: list[tuple[Record, str]], rng: random.Random
) -> None:
    moved = [(sealed[index][0], sealed[source][1]) for index, source in _cycle(RECORDS, rng).items()]

    seen = outcomes(_decrypts(encryptor, moved))

    assert seen == ALL_REFUSED
    assert seen["plaintext"] == 0


@pytest.mark.parametrize("field", ["username", "server", "key"])
def test_a_ciphertext_moved_to_a_record_differing_in_one_name_only_is_refused(
    encryptor: SecretEncryptor, sealed: list[tuple[Record, str]], rng: random.Random, field: str
) -> None:
    """The same user's other key, the same key of another server, another user's same record."""
    moved = []
    for index, source in _cycle(RECORDS, rng).items():
        record, ciphertext = sealed[index]
        other = sealed[source][0]
        names = {**record.names, field: other.names[field]}
        moved.append(functools.partial(encryptor.decrypt, ciphertext, **names))

    seen = outcomes(moved)

    assert seen == ALL_REFUSED
    assert seen["plaintext"] == 0
