"""SecretEncryptor: the v1 format, tampering, associated data, key ids, master keys, the legacy reader."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import string
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import NamedTuple

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from conftest import assert_not_leaked, new_canary
from mcp_secrets.crypto import (
    LEGACY_KEY_ID,
    SecretEncryptor,
    generate_master_key,
    is_legacy_ciphertext,
    key_id_for,
    parse_master_key,
)
from mcp_secrets.errors import ConfigurationError, DecryptionError, InvalidInputError

RECORD = {"username": "alice", "server": "github", "key": "TOKEN"}
B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
STRAY_CHARACTERS = "+/=!. \n\x00é🔑"  # not ":", which splits the ciphertext into more fields
V1 = re.compile(r"v1:(?P<key_id>[0-9a-f]{8}):(?P<payload>[A-Za-z0-9_-]+)")


def fresh_master_key() -> bytes:
    return parse_master_key(generate_master_key())


class Sealed(NamedTuple):
    key_id: str
    nonce: bytes
    ciphertext: bytes
    tag: bytes


def unseal(token: str) -> Sealed:
    """Read ``v1:<kid>:<base64url(nonce||ct||tag)>`` as documented, without the package's help."""
    match = V1.fullmatch(token)
    assert match is not None
    payload = match["payload"]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return Sealed(match["key_id"], raw[:12], raw[12:-16], raw[-16:])


def encode_payload(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def canonical_bytes(payload: str) -> bytes | None:
    """The reference reading: decode leniently, and only a payload that re-encodes to itself counts."""
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except ValueError:  # binascii.Error, or not ASCII
        return None
    return raw if encode_payload(raw) == payload else None


def refusal(encryptor: SecretEncryptor, payload: str) -> str:
    """Why the encryptor refuses a v1 ciphertext with this payload under its active key."""
    with pytest.raises(DecryptionError) as raised:
        encryptor.decrypt(f"v1:{encryptor.active_key_id}:{payload}", **RECORD)
    return str(raised.value)


def assert_refused_for_the_right_reason(encryptor: SecretEncryptor, payload: str) -> None:
    # Only a canonical payload of nonce and tag at least reaches AES-GCM; any other is malformed.
    raw = canonical_bytes(payload)
    reason = refusal(encryptor, payload)
    if raw is not None and len(raw) >= 28:
        assert "altered, or copied from another record" in reason
    else:
        assert "is damaged: its ciphertext is malformed" in reason


def legacy_ciphertext(value: str, legacy_key: str) -> str:
    """The original design's ``iv:authTag:ciphertext``: hex, key = SHA-256 of a string, no associated data."""
    return legacy_ciphertext_of_bytes(value.encode("utf-8"), legacy_key)


def legacy_ciphertext_of_bytes(plaintext: bytes, legacy_key: str) -> str:
    iv = os.urandom(12)
    sealed = AESGCM(hashlib.sha256(legacy_key.encode("utf-8")).digest()).encrypt(iv, plaintext, None)
    return f"{iv.hex()}:{sealed[-16:].hex()}:{sealed[:-16].hex()}"


# --- round trips and the format -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ghp_16C7e42F292c6912E7710c838347Ae178B4a", id="ascii"),
        pytest.param("pässwörd 🔑 密码 ключ\n\ttab", id="unicode"),
        pytest.param("x" * 65536, id="64KiB"),
        pytest.param("é" * 32768, id="64KiB-two-byte"),
    ],
)
def test_value_round_trips(encryptor: SecretEncryptor, value: str) -> None:
    assert encryptor.decrypt(encryptor.encrypt(value, **RECORD), **RECORD) == value


def test_ciphertext_follows_the_documented_v1_format(encryptor: SecretEncryptor, canary: str) -> None:
    token = encryptor.encrypt(canary, **RECORD)

    sealed = unseal(token)

    assert sealed.key_id == encryptor.active_key_id
    assert len(sealed.nonce) == 12
    assert len(sealed.tag) == 16
    assert len(sealed.ciphertext) == len(canary.encode("utf-8"))
    assert canary not in token


def reference_data_key(master_key: bytes) -> bytes:
    """The data key as the module docstring specifies it: HKDF-SHA256 of the master key, no salt."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"mcp-secrets v1 data key").derive(master_key)


def reference_associated_data(username: str, server: str, key: str) -> bytes:
    """A label and the record's three names, each with a 4-byte big-endian length in front."""
    parts = [b"mcp-secrets v1 record", *(part.encode("utf-8") for part in (username, server, key))]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def test_a_ciphertext_opens_with_the_key_derived_from_the_master_key_and_no_other(canary: str) -> None:
    master_key = fresh_master_key()
    sealed = unseal(SecretEncryptor([master_key]).encrypt(canary, **RECORD))
    aad = reference_associated_data(**RECORD)

    opened = AESGCM(reference_data_key(master_key)).decrypt(sealed.nonce, sealed.ciphertext + sealed.tag, aad)

    assert opened == canary.encode("utf-8")
    for wrong_key in (reference_data_key(fresh_master_key()), master_key, bytes(32)):
        with pytest.raises(InvalidTag):
            AESGCM(wrong_key).decrypt(sealed.nonce, sealed.ciphertext + sealed.tag, aad)


def test_a_ciphertext_written_by_the_reference_opens_with_the_encryptor(canary: str) -> None:
    master_key = fresh_master_key()
    nonce = os.urandom(12)
    body = AESGCM(reference_data_key(master_key)).encrypt(
        nonce, canary.encode("utf-8"), reference_associated_data(**RECORD)
    )
    token = f"v1:{key_id_for(master_key)}:{encode_payload(nonce + body)}"

    assert SecretEncryptor([master_key]).decrypt(token, **RECORD) == canary


def test_another_key_behind_the_same_key_id_is_refused_as_altered(canary: str) -> None:
    writer = SecretEncryptor([fresh_master_key()])
    token = writer.encrypt(canary, **RECORD)
    impostor = SecretEncryptor([fresh_master_key()])
    # The other key's id, forged onto the ciphertext: the lookup finds a key, and AES-GCM refuses.
    forged = token.replace(writer.active_key_id, impostor.active_key_id, 1)

    with pytest.raises(DecryptionError, match="altered, or copied from another record") as raised:
        impostor.decrypt(forged, **RECORD)

    assert_not_leaked(raised.value, canary)


def test_two_encryptions_of_the_same_value_differ_by_a_fresh_nonce(
    encryptor: SecretEncryptor, canary: str
) -> None:
    first, second = (unseal(encryptor.encrypt(canary, **RECORD)) for _ in range(2))

    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.tag != second.tag


# --- tampering ------------------------------------------------------------------------------------


def _another_alphabet_character(character: str) -> str:
    # The next base64url character: in the last position this may touch only unused low bits.
    if character in B64URL_ALPHABET:
        return B64URL_ALPHABET[(B64URL_ALPHABET.index(character) + 1) % len(B64URL_ALPHABET)]
    return "A"


REPLACEMENTS: dict[str, Callable[[str], str]] = {
    "next-base64url-character": _another_alphabet_character,
    "separator": lambda character: "::" if character == ":" else ":",
    "not-base64url": lambda _: "!",
    "non-ascii": lambda _: "é",
}


# Three lengths, so the payload ends with 0, 2 and 4 unused bits in its last character.
@pytest.mark.parametrize("suffix", ["", "x", "xy"])
@pytest.mark.parametrize("replace", REPLACEMENTS.values(), ids=REPLACEMENTS.keys())
def test_every_changed_character_of_a_ciphertext_is_rejected(
    encryptor: SecretEncryptor, canary: str, suffix: str, replace: Callable[[str], str]
) -> None:
    value = canary + suffix
    token = encryptor.encrypt(value, **RECORD)

    for position, character in enumerate(token):
        changed = token[:position] + replace(character) + token[position + 1 :]
        assert changed != token
        with pytest.raises(DecryptionError) as raised:
            encryptor.decrypt(changed, **RECORD)
        assert_not_leaked(raised.value, value)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda token: token[:-1], id="last-character-dropped"),
        pytest.param(lambda token: token + "A", id="character-appended"),
        pytest.param(lambda token: token.rsplit(":", 1)[0] + ":", id="payload-empty"),
        pytest.param(lambda token: token + ":extra", id="fourth-field"),
        pytest.param(lambda token: token.replace("v1:", "V1:", 1), id="version-upper-case"),
        pytest.param(lambda token: token.upper(), id="upper-case"),
        pytest.param(lambda _: "", id="empty"),
    ],
)
def test_truncated_or_extended_ciphertext_is_rejected(
    encryptor: SecretEncryptor, canary: str, change: Callable[[str], str]
) -> None:
    with pytest.raises(DecryptionError) as raised:
        encryptor.decrypt(change(encryptor.encrypt(canary, **RECORD)), **RECORD)
    assert_not_leaked(raised.value, canary)


def test_every_flipped_bit_of_the_payload_is_rejected(encryptor: SecretEncryptor, canary: str) -> None:
    token = encryptor.encrypt(canary, **RECORD)
    prefix, payload = token.rsplit(":", 1)
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))

    for position in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[position] ^= 1 << bit
            with pytest.raises(DecryptionError) as raised:
                encryptor.decrypt(f"{prefix}:{encode_payload(bytes(flipped))}", **RECORD)
            assert_not_leaked(raised.value, canary)


# Three lengths again: the last character has 0, 4 and 2 unused low bits, and only zeros are canonical.
@pytest.mark.parametrize("suffix", ["", "x", "xy"])
def test_every_other_last_character_is_refused_and_only_non_canonical_ones_as_malformed(
    encryptor: SecretEncryptor, canary: str, suffix: str
) -> None:
    payload = encryptor.encrypt(canary + suffix, **RECORD).rsplit(":", 1)[1]
    malformed = 0

    for character in B64URL_ALPHABET + STRAY_CHARACTERS:
        if character != payload[-1]:
            changed = payload[:-1] + character
            assert_refused_for_the_right_reason(encryptor, changed)
            malformed += canonical_bytes(changed) is None

    unused_bits = {0: 0, 2: 4, 3: 2}[len(payload) % 4]
    assert malformed == len(STRAY_CHARACTERS) + 64 - 2 ** (6 - unused_bits)


# A decoder that skips stray characters can still land on a valid-looking length: with four, or two
# in the right place, the padding works out. Each count and each length must be refused all the same.
@pytest.mark.parametrize("count", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("suffix", ["", "x", "xy"])
def test_stray_characters_in_any_number_are_refused_as_malformed(
    encryptor: SecretEncryptor, canary: str, suffix: str, count: int
) -> None:
    payload = encryptor.encrypt(canary + suffix, **RECORD).rsplit(":", 1)[1]
    positions = range(1, len(payload), len(payload) // count)[:count]

    for stray in STRAY_CHARACTERS:
        replaced, inserted = list(payload), list(payload)
        for at in reversed(positions):
            replaced[at] = stray
            inserted.insert(at, stray)
        for changed in ("".join(replaced), "".join(inserted)):
            assert "is damaged: its ciphertext is malformed" in refusal(encryptor, changed)


# --- associated data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "server", "key"),
    [
        pytest.param("bob", "github", "TOKEN", id="another-user"),
        pytest.param("alice", "linear", "TOKEN", id="another-server"),
        pytest.param("alice", "github", "OTHER", id="another-key"),
        # The record's parts are length-prefixed: shifting a boundary makes another record.
        pytest.param("alic", "egithub", "TOKEN", id="boundary-user-server"),
        pytest.param("alice", "githubT", "OKEN", id="boundary-server-key"),
    ],
)
def test_ciphertext_moved_to_another_record_does_not_decrypt(
    encryptor: SecretEncryptor, canary: str, username: str, server: str, key: str
) -> None:
    token = encryptor.encrypt(canary, **RECORD)

    with pytest.raises(DecryptionError, match="altered, or copied from another record") as raised:
        encryptor.decrypt(token, username=username, server=server, key=key)

    message = str(raised.value)
    assert repr(key) in message
    assert repr(server) in message
    assert_not_leaked(raised.value, canary)


def test_ciphertext_does_not_decrypt_under_another_master_key(canary: str) -> None:
    writer, reader = SecretEncryptor([fresh_master_key()]), SecretEncryptor([fresh_master_key()])

    with pytest.raises(DecryptionError) as raised:
        reader.decrypt(writer.encrypt(canary, **RECORD), **RECORD)

    assert writer.active_key_id in str(raised.value)
    assert "TOKEN" in str(raised.value)
    assert_not_leaked(raised.value, canary)


# --- key ids and rotation -------------------------------------------------------------------------


def test_first_master_key_writes_and_every_configured_key_reads(canary: str) -> None:
    key_a, key_b, key_c = (fresh_master_key() for _ in range(3))
    written = {
        master_key: SecretEncryptor([master_key]).encrypt(canary, **RECORD)
        for master_key in (key_a, key_b, key_c)
    }

    rotated = SecretEncryptor([key_b, key_a, key_c])

    assert rotated.active_key_id == key_id_for(key_b)
    assert rotated.key_ids == (key_id_for(key_b), key_id_for(key_a), key_id_for(key_c))
    assert unseal(rotated.encrypt(canary, **RECORD)).key_id == key_id_for(key_b)
    for token in written.values():
        assert rotated.decrypt(token, **RECORD) == canary


def test_record_written_with_an_old_key_still_decrypts_after_rotation(canary: str) -> None:
    key_a, key_b = fresh_master_key(), fresh_master_key()
    token = SecretEncryptor([key_a]).encrypt(canary, **RECORD)

    assert SecretEncryptor([key_b, key_a]).decrypt(token, **RECORD) == canary


def test_record_written_with_a_key_not_configured_names_that_key_id(canary: str) -> None:
    retired = fresh_master_key()
    token = SecretEncryptor([retired]).encrypt(canary, **RECORD)
    current = SecretEncryptor([fresh_master_key(), fresh_master_key()])

    with pytest.raises(DecryptionError, match="not configured") as raised:
        current.decrypt(token, **RECORD)

    assert key_id_for(retired) in str(raised.value)
    assert_not_leaked(raised.value, canary)


@pytest.mark.parametrize("key_id", ["zz", "0123abcd0", "0123ABCD", "", "{canary}"])
def test_a_v1_record_whose_key_id_is_no_key_id_is_in_no_format_and_never_quoted(
    encryptor: SecretEncryptor, canary: str, key_id: str
) -> None:
    # Text put into the store by hand, a plaintext even: quoted as "master key ...", it would reach a log.
    ciphertext = f"v1:{key_id.format(canary=canary)}:{'A' * 60}"

    assert encryptor.unreadable_because(ciphertext) == "not in a ciphertext format mcp-secrets can read"
    with pytest.raises(DecryptionError, match="not in a ciphertext format mcp-secrets can read") as raised:
        encryptor.decrypt(ciphertext, **RECORD)
    assert_not_leaked(raised.value, canary)


def test_key_id_of_reports_the_writing_key(canary: str) -> None:
    key_a, key_b = fresh_master_key(), fresh_master_key()
    encryptor = SecretEncryptor([key_a, key_b])
    token_a = encryptor.encrypt(canary, **RECORD)
    token_b = SecretEncryptor([key_b]).encrypt(canary, **RECORD)

    assert encryptor.key_id_of(token_a) == key_id_for(key_a) == unseal(token_a).key_id
    assert encryptor.key_id_of(token_b) == key_id_for(key_b)
    assert encryptor.key_id_of(legacy_ciphertext(canary, "old key")) == "legacy"


def test_same_master_key_configured_twice_is_refused() -> None:
    master_key = fresh_master_key()

    with pytest.raises(ConfigurationError, match="configured twice") as raised:
        SecretEncryptor([master_key, fresh_master_key(), master_key])

    assert key_id_for(master_key) in str(raised.value)
    assert_not_leaked(raised.value, encode_payload(master_key), master_key.hex())


@pytest.mark.parametrize("master_keys", [[], [b"\x00" * 31], [b"\x00" * 33], [os.urandom(32), b""]])
def test_encryptor_needs_master_keys_of_32_bytes(master_keys: list[bytes]) -> None:
    with pytest.raises(ConfigurationError):
        SecretEncryptor(master_keys)


def test_key_derivation_is_deterministic(canary: str) -> None:
    master_key = fresh_master_key()
    token = SecretEncryptor([master_key]).encrypt(canary, **RECORD)

    rebuilt = SecretEncryptor([bytes(master_key)])

    assert key_id_for(master_key) == key_id_for(bytes(master_key)) == rebuilt.active_key_id
    assert re.fullmatch(r"[0-9a-f]{8}", rebuilt.active_key_id)
    assert rebuilt.decrypt(token, **RECORD) == canary
    assert key_id_for(fresh_master_key()) != key_id_for(master_key)


def test_the_key_id_is_hkdf_of_the_master_key_under_its_own_label() -> None:
    # Published in every record: derived apart from the data key, it says nothing about it.
    master_key = fresh_master_key()

    expected = HKDF(hashes.SHA256(), 4, salt=None, info=b"mcp-secrets v1 key id").derive(master_key)

    assert key_id_for(master_key) == expected.hex()
    assert not reference_data_key(master_key).startswith(expected)


def test_a_key_derived_for_another_use_is_its_own_and_not_the_data_key() -> None:
    master_key = fresh_master_key()
    encryptor = SecretEncryptor([master_key, fresh_master_key()])

    derived = encryptor.derive_key("request state")

    assert derived == HKDF(hashes.SHA256(), 32, salt=None, info=b"mcp-secrets v1 request state").derive(
        master_key
    )
    assert derived != reference_data_key(master_key)
    assert derived != encryptor.derive_key("another use")


# --- master key parsing ---------------------------------------------------------------------------


def test_generated_master_key_parses_to_32_bytes() -> None:
    text = generate_master_key()

    assert len(text) == 43
    assert len(parse_master_key(text)) == 32
    assert generate_master_key() != text


# These 32 bytes spell '+' and '/' in standard base64, '-' and '_' in base64url.
ALPHABET_BYTES = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFB, 0xFF])


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda raw: base64.b64encode(raw).decode(), id="standard-padded"),
        pytest.param(lambda raw: base64.b64encode(raw).decode().rstrip("="), id="standard-unpadded"),
        pytest.param(lambda raw: base64.urlsafe_b64encode(raw).decode(), id="url-padded"),
        pytest.param(encode_payload, id="url-unpadded"),
        pytest.param(lambda raw: f"  {encode_payload(raw)}\n", id="surrounding-whitespace"),
    ],
)
def test_master_key_parses_from_base64_or_base64url(spell: Callable[[bytes], str]) -> None:
    text = spell(ALPHABET_BYTES)
    assert set(text) & set("+/-_")

    assert parse_master_key(text) == ALPHABET_BYTES


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(encode_payload(os.urandom(31)), id="short"),
        pytest.param(encode_payload(os.urandom(33)), id="long"),
        pytest.param(base64.b64encode(os.urandom(64)).decode(), id="long-64-bytes"),
        pytest.param(generate_master_key() + "!", id="trailing-junk"),
        pytest.param(f"{new_canary()}!{new_canary()}", id="not-base64"),
        pytest.param("ü" * 43, id="non-ascii"),
        pytest.param(os.urandom(32).hex(), id="hex"),
        pytest.param("", id="empty"),
        pytest.param("   \n", id="blank"),
    ],
)
def test_malformed_master_key_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ConfigurationError, match="32 random bytes") as raised:
        parse_master_key(text)

    if text.strip():
        assert_not_leaked(raised.value, text.strip())


# --- the legacy format ----------------------------------------------------------------------------


@pytest.fixture
def legacy_key() -> str:
    """A key string of the original design: random, so no message can hold it by chance."""
    return new_canary()


def test_legacy_ciphertext_decrypts_with_the_legacy_key(
    master_key: bytes, canary: str, legacy_key: str
) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)

    token = legacy_ciphertext(canary, legacy_key)

    # The legacy format has no associated data: any record reads it.
    assert encryptor.decrypt(token, **RECORD) == canary
    assert encryptor.decrypt(token, username="bob", server="linear", key="K") == canary


def test_legacy_ciphertext_of_an_empty_value_reads_as_the_empty_value(
    master_key: bytes, legacy_key: str
) -> None:
    # The original design wrote an empty value as "iv:authTag:", its ciphertext field empty.
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)
    token = legacy_ciphertext("", legacy_key)
    assert token.endswith(":")

    assert is_legacy_ciphertext(token)
    assert encryptor.unreadable_because(token) is None
    assert encryptor.decrypt(token, **RECORD) == ""
    with pytest.raises(DecryptionError, match="altered or wrong key"):
        SecretEncryptor([master_key], legacy_key=new_canary()).decrypt(token, **RECORD)


def test_legacy_ciphertext_without_a_legacy_key_names_the_setting(
    encryptor: SecretEncryptor, canary: str, legacy_key: str
) -> None:
    with pytest.raises(DecryptionError, match="MCP_SECRETS_LEGACY_KEY") as raised:
        encryptor.decrypt(legacy_ciphertext(canary, legacy_key), **RECORD)

    assert_not_leaked(raised.value, canary, legacy_key)


def _move_legacy_tag_boundary(token: str) -> str:
    """``iv:tag:body`` with the body's last byte moved to the front of the tag: the same bytes in all."""
    iv, tag, body = token.split(":")
    return f"{iv}:{body[-2:]}{tag}:{body[:-2]}"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda token: token[:-1] + ("0" if token[-1] != "0" else "1"), id="altered-body"),
        pytest.param(
            lambda token: token.split(":", 1)[1] + ":" + token.split(":", 1)[0], id="fields-swapped"
        ),
        pytest.param(lambda token: "0" + token, id="odd-length-hex"),
        # AES-GCM takes no nonce under 8 bytes: it would raise ValueError, not DecryptionError.
        pytest.param(lambda token: "00112233:" + token.split(":", 1)[1], id="4-byte-iv"),
        # The same bytes with the last of the body read as the tag's first: the tag is 16 bytes or nothing.
        pytest.param(_move_legacy_tag_boundary, id="tag-boundary-moved"),
    ],
)
def test_damaged_legacy_ciphertext_is_rejected(
    master_key: bytes, canary: str, legacy_key: str, change: Callable[[str], str]
) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)
    token = change(legacy_ciphertext(canary, legacy_key))

    with pytest.raises(DecryptionError) as raised:
        encryptor.decrypt(token, **RECORD)

    assert_not_leaked(raised.value, canary)


@pytest.mark.parametrize(
    ("iv_bytes", "tag_bytes", "said"),
    [
        # Node.js's crypto takes an IV of 1 to 128 bytes and a tag of 4 to 16 ({authTagLength}).
        (4, 16, "has a 4-byte IV, which mcp-secrets cannot read (8 to 128 bytes)"),
        (129, 16, "has a 129-byte IV, which mcp-secrets cannot read (8 to 128 bytes)"),
        (12, 12, "has a 12-byte authentication tag, which mcp-secrets cannot read (16 bytes)"),
    ],
    ids=["4-byte-iv", "129-byte-iv", "12-byte-tag"],
)
def test_a_legacy_ciphertext_of_an_iv_or_tag_length_not_read_says_which_rather_than_damaged(
    master_key: bytes, legacy_key: str, iv_bytes: int, tag_bytes: int, said: str
) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)
    token = f"{os.urandom(iv_bytes).hex()}:{os.urandom(tag_bytes).hex()}:{os.urandom(20).hex()}"

    with pytest.raises(DecryptionError) as raised:
        encryptor.decrypt(token, **RECORD)

    where = "secret 'TOKEN' of server 'github'"
    assert str(raised.value) == f"{where} is not readable: its legacy ciphertext {said}"


@pytest.mark.parametrize("with_legacy_key", [False, True], ids=["no-legacy-key", "legacy-key"])
@pytest.mark.parametrize("ciphertext", ["v2:0123abcd:payload", "iv:tag:body", "0a1b:0a1g:0a1b"])
def test_three_fields_not_all_hex_are_in_no_readable_format_not_the_legacy_one(
    master_key: bytes, legacy_key: str, with_legacy_key: bool, ciphertext: str
) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key if with_legacy_key else None)

    assert encryptor.unreadable_because(ciphertext) == "not in a ciphertext format mcp-secrets can read"
    with pytest.raises(DecryptionError, match="not in a ciphertext format mcp-secrets can read"):
        encryptor.decrypt(ciphertext, **RECORD)


def test_legacy_ciphertext_with_the_wrong_legacy_key_is_rejected(
    master_key: bytes, canary: str, legacy_key: str
) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=new_canary())

    with pytest.raises(DecryptionError, match="legacy key") as raised:
        encryptor.decrypt(legacy_ciphertext(canary, legacy_key), **RECORD)

    assert_not_leaked(raised.value, canary)


def test_legacy_plaintext_that_is_not_utf8_is_a_decryption_error_without_its_bytes(
    master_key: bytes, canary: str, legacy_key: str
) -> None:
    # Authentic, but written by something that stored bytes, not text.
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)
    token = legacy_ciphertext_of_bytes(b"\xff" + canary.encode(), legacy_key)

    with pytest.raises(DecryptionError) as raised:
        encryptor.decrypt(token, **RECORD)

    assert_not_leaked(raised.value, canary)


def test_a_plaintext_that_is_not_utf8_is_a_decryption_error_without_its_bytes(
    master_key: bytes, canary: str
) -> None:
    # Authentic under a configured key (whoever holds it can write one), but not text.
    data_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mcp-secrets v1 data key")
    parts = (b"mcp-secrets v1 record", b"alice", b"github", b"TOKEN")
    aad = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    nonce = os.urandom(12)
    sealed = AESGCM(data_key.derive(master_key)).encrypt(nonce, b"\xff" + canary.encode(), aad)
    token = f"v1:{key_id_for(master_key)}:{encode_payload(nonce + sealed)}"

    with pytest.raises(DecryptionError, match="not UTF-8") as raised:
        SecretEncryptor([master_key]).decrypt(token, **RECORD)

    assert_not_leaked(raised.value, canary)


def test_new_writes_never_use_the_legacy_format(master_key: bytes, canary: str, legacy_key: str) -> None:
    encryptor = SecretEncryptor([master_key], legacy_key=legacy_key)

    token = encryptor.encrypt(canary, **RECORD)

    assert token.startswith("v1:")
    assert unseal(token).key_id == key_id_for(master_key)
    assert encryptor.key_ids == (key_id_for(master_key),)


# --- the primitive against NIST's AES-GCM vectors -------------------------------------------------


class GcmVector(NamedTuple):
    key: bytes
    iv: bytes
    plaintext: bytes | None  # None: the vector must fail authentication
    aad: bytes
    ciphertext: bytes
    tag: bytes


def _nist_gcm_vectors(filename: str) -> list[pytest.ParameterSet]:
    """The 256-bit key, 96-bit IV, 128-bit tag vectors of one CAVS file: the shape mcp-secrets uses."""
    path = str(PurePosixPath("ciphers", "AES", "GCM", filename))
    with cryptography_vectors.open_vector_file(path, "r") as lines:
        text = lines.read()
    vectors, section = [], {}
    for block in re.split(r"\r?\n\s*\r?\n", text):
        fields = {}
        for line in block.splitlines():
            if header := re.fullmatch(r"\[(\w+) = (\d+)\]", line.strip()):
                section[header[1]] = int(header[2])
            elif "=" in line:
                name, _, value = line.partition("=")
                fields[name.strip()] = value.strip()
            elif line.strip() == "FAIL":
                fields["FAIL"] = ""
        if "Count" not in fields or (section["Keylen"], section["IVlen"], section["Taglen"]) != (
            256,
            96,
            128,
        ):
            continue
        vector = GcmVector(
            key=bytes.fromhex(fields["Key"]),
            iv=bytes.fromhex(fields["IV"]),
            plaintext=None if "FAIL" in fields else bytes.fromhex(fields["PT"]),
            aad=bytes.fromhex(fields["AAD"]),
            ciphertext=bytes.fromhex(fields["CT"]),
            tag=bytes.fromhex(fields["Tag"]),
        )
        label = f"{filename}-pt{section['PTlen']}-aad{section['AADlen']}-{fields['Count']}"
        vectors.append(pytest.param(vector, id=label))
    return vectors


ENCRYPT_VECTORS = _nist_gcm_vectors("gcmEncryptExtIV256.rsp")
DECRYPT_VECTORS = _nist_gcm_vectors("gcmDecrypt256.rsp")


def test_nist_vector_files_hold_the_expected_subset() -> None:
    # 5 plaintext lengths x 5 AAD lengths x 15 vectors, in each file.
    assert len(ENCRYPT_VECTORS) == len(DECRYPT_VECTORS) == 375
    assert any(vector.values[0].plaintext is None for vector in DECRYPT_VECTORS)


@pytest.mark.parametrize("vector", ENCRYPT_VECTORS)
def test_aesgcm_matches_nist_encrypt_vectors(vector: GcmVector) -> None:
    assert vector.plaintext is not None
    cipher = AESGCM(vector.key)

    sealed = cipher.encrypt(vector.iv, vector.plaintext, vector.aad)

    assert sealed == vector.ciphertext + vector.tag
    assert cipher.decrypt(vector.iv, sealed, vector.aad) == vector.plaintext


@pytest.mark.parametrize("vector", DECRYPT_VECTORS)
def test_aesgcm_matches_nist_decrypt_vectors(vector: GcmVector) -> None:
    cipher = AESGCM(vector.key)

    if vector.plaintext is None:
        with pytest.raises(InvalidTag):
            cipher.decrypt(vector.iv, vector.ciphertext + vector.tag, vector.aad)
    else:
        assert cipher.decrypt(vector.iv, vector.ciphertext + vector.tag, vector.aad) == vector.plaintext


# --- properties -----------------------------------------------------------------------------------

PROPERTY_ENCRYPTOR = SecretEncryptor([fresh_master_key()])
names = st.from_regex(r"[A-Za-z0-9_.\-]{1,128}", fullmatch=True)
usernames = st.from_regex(r"[A-Za-z0-9_.@\-]{1,128}", fullmatch=True)


@given(value=st.text(min_size=1), username=usernames, server=names, key=names)
def test_any_text_round_trips_for_any_valid_record(value: str, username: str, server: str, key: str) -> None:
    record = {"username": username, "server": server, "key": key}

    token = PROPERTY_ENCRYPTOR.encrypt(value, **record)

    assert token.startswith(f"v1:{PROPERTY_ENCRYPTOR.active_key_id}:")
    assert PROPERTY_ENCRYPTOR.decrypt(token, **record) == value


def test_a_value_with_a_lone_surrogate_is_refused_without_echoing_it(
    encryptor: SecretEncryptor, canary: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        encryptor.encrypt(canary + "\ud800", **RECORD)

    assert "value" in str(raised.value)
    assert_not_leaked(raised.value, canary)


@given(
    raw=st.binary(min_size=24, max_size=48),
    edits=st.lists(
        st.tuples(st.integers(0, 80), st.sampled_from(B64URL_ALPHABET + STRAY_CHARACTERS), st.booleans()),
        max_size=3,
    ),
)
def test_a_payload_is_read_only_in_its_one_canonical_spelling(
    raw: bytes, edits: list[tuple[int, str, bool]]
) -> None:
    payload = encode_payload(raw)
    for position, character, insert in edits:
        at = position % (len(payload) + 1)
        payload = payload[:at] + character + payload[at + (not insert) :]

    assert_refused_for_the_right_reason(PROPERTY_ENCRYPTOR, payload)


WRONG_TYPES = [None, 7, 1.5, ["x"], {"x": 1}]


@pytest.mark.parametrize("field", ["value", "username", "server", "key"])
@pytest.mark.parametrize("wrong", [*WRONG_TYPES, b"bytes"], ids=repr)
def test_encrypt_of_an_argument_that_is_not_text_names_it(
    encryptor: SecretEncryptor, field: str, wrong: object
) -> None:
    """Python's own TypeError or AttributeError named an attribute, not the argument."""
    arguments: dict[str, object] = {"value": "some value", **RECORD, field: wrong}
    value = arguments.pop("value")

    with pytest.raises(InvalidInputError, match=f"^{field} must be text"):
        encryptor.encrypt(value, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("wrap", [str.encode, lambda text: [text]], ids=["bytes", "list"])
def test_encrypt_of_a_value_that_is_not_text_carries_no_error_holding_it(
    encryptor: SecretEncryptor, canary: str, wrap: Callable[[str], object]
) -> None:
    # Python's AttributeError (`'bytes' object has no attribute 'encode'`) keeps the object as its `obj`.
    value = wrap(canary)

    with pytest.raises(InvalidInputError, match=r"^value must be text") as raised:
        encryptor.encrypt(value, **RECORD)  # type: ignore[arg-type]

    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None


@pytest.mark.parametrize("field", ["username", "server", "key"])
@pytest.mark.parametrize("wrong", [*WRONG_TYPES, b"bytes"], ids=repr)
def test_decrypt_of_a_record_name_that_is_not_text_names_it(
    encryptor: SecretEncryptor, field: str, wrong: object
) -> None:
    token = encryptor.encrypt("some value", **RECORD)

    with pytest.raises(InvalidInputError, match=f"^{field} must be text"):
        encryptor.decrypt(token, **{**RECORD, field: wrong})  # type: ignore[arg-type]


@pytest.mark.parametrize("wrong", WRONG_TYPES, ids=repr)
def test_a_ciphertext_that_is_not_text_is_a_damaged_record_whatever_its_type(
    encryptor: SecretEncryptor, wrong: object
) -> None:
    refusal = "secret 'TOKEN' of server 'github' is damaged: its ciphertext is not text"
    with pytest.raises(DecryptionError, match=f"^{re.escape(refusal)}"):
        encryptor.decrypt(wrong, **RECORD)  # type: ignore[arg-type]
    assert encryptor.key_id_of(wrong) == LEGACY_KEY_ID  # type: ignore[arg-type]
    reason = encryptor.unreadable_because(wrong)  # type: ignore[arg-type]
    assert reason == f"damaged: its ciphertext is not text but {type(wrong).__name__}"


def test_a_ciphertext_stored_as_bytes_is_damaged_without_its_bytes_in_the_error(
    encryptor: SecretEncryptor, canary: str
) -> None:
    """Bytes of a v1 token, as a store that kept binary would hand them back: refused, never read."""
    token = encryptor.encrypt(canary, **RECORD).encode("ascii")

    with pytest.raises(DecryptionError, match="its ciphertext is not text") as raised:
        encryptor.decrypt(token, **RECORD)  # type: ignore[arg-type]

    assert_not_leaked(raised.value, canary)
    assert_not_leaked(raised.value, token.decode("ascii"))


def test_a_value_given_as_bytes_is_refused_without_its_bytes_in_the_error(
    encryptor: SecretEncryptor, canary: str
) -> None:
    """A caller that encoded the value first gets the error naming the field, never the value back."""
    with pytest.raises(InvalidInputError, match=r"^value must be text, not bytes$") as raised:
        encryptor.encrypt(canary.encode(), **RECORD)  # type: ignore[arg-type]

    assert_not_leaked(raised.value, canary)
