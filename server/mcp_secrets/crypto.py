"""SecretEncryptor: AES-256-GCM with per-record associated data and key ids.

Token format (version 1), one ASCII line::

    v1:<key id>:<base64url(nonce || ciphertext || tag)>

- ``key id``: 8 hex characters derived from the master key with HKDF, so a
  record says which master key wrote it without revealing anything about it.
- ``nonce``: 12 random bytes, fresh for every encryption; ``tag``: 16 bytes.
- The associated data is ``(username, server, key)``: a ciphertext moved to
  another user's, server's or key's record no longer decrypts.

The original design's format ``iv:authTag:ciphertext`` (hex, key = SHA-256 of
a key string, no associated data) is read when a legacy key is configured,
and never written.

Why HKDF-SHA256 instead of the original SHA-256 of the master key: HKDF is a
key derivation function built for this job, and its ``info`` label gives
independent keys for independent uses (the data key, the key id), so the key
id published in every record says nothing about the data key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcp_secrets.errors import ConfigurationError, DecryptionError, InvalidInputError

VERSION = "v1"
LEGACY_KEY_ID = "legacy"
MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_DATA_KEY_INFO = b"mcp-secrets v1 data key"
_KEY_ID_INFO = b"mcp-secrets v1 key id"
_AAD_LABEL = b"mcp-secrets v1 record"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def generate_master_key() -> str:
    """Return a fresh master key: 32 random bytes, base64url without padding."""
    return _b64encode(os.urandom(MASTER_KEY_BYTES))


def parse_master_key(text: str) -> bytes:
    """Decode one master key; refuse anything but 32 bytes of base64 or base64url."""
    stripped = text.strip()
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != MASTER_KEY_BYTES:
        raise ConfigurationError(
            "the master key must be 32 random bytes written as base64 (43 characters); "
            "run `mcp-secrets keygen` to make one"
        )
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode_canonical(text: str) -> bytes | None:
    """Decode unpadded base64url, refusing any other spelling of the same bytes."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # The lenient decoder skips stray characters, and unused low bits in the last character would let
    # two strings decode alike: only the one canonical spelling is accepted.
    return raw if _b64encode(raw) == text else None


def _where(record: tuple[str, str]) -> str:
    """How an error names a record (server, key); built only when there is an error."""
    server, key = record
    return f"secret {key!r} of server {server!r}"


def _text(plain: bytes, record: tuple[str, str] | str) -> str:
    """Decode a plaintext; a UnicodeDecodeError would carry the plaintext bytes, so it never escapes."""
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        where = record if isinstance(record, str) else _where(record)
        raise DecryptionError(f"{where} decrypted to bytes that are not UTF-8 text") from None


def _hkdf(master_key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master_key)


def key_id_for(master_key: bytes) -> str:
    """The public id of a master key, as written into every record it encrypts."""
    return _hkdf(master_key, _KEY_ID_INFO, 4).hex()


@functools.lru_cache(maxsize=4096)
def associated_data(username: str, server: str, key: str) -> bytes:
    """Bind a ciphertext to its record; length prefixes keep the encoding unambiguous."""
    parts = [_AAD_LABEL, *(part.encode("utf-8") for part in (username, server, key))]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


class SecretEncryptor:
    """Encrypts values with the active master key; decrypts with any configured one.

    The first master key is active for writing; the others stay readable so that
    records written before a rotation still decrypt. Keys are derived once, here.
    """

    def __init__(self, master_keys: Sequence[bytes], *, legacy_key: str | None = None) -> None:
        if not master_keys:
            raise ConfigurationError("at least one master key is required")
        self._ciphers: dict[str, AESGCM] = {}
        for master_key in master_keys:
            if len(master_key) != MASTER_KEY_BYTES:
                raise ConfigurationError("each master key must be exactly 32 bytes")
            key_id = key_id_for(master_key)
            if key_id in self._ciphers:
                raise ConfigurationError(f"master key {key_id} is configured twice")
            self._ciphers[key_id] = AESGCM(_hkdf(master_key, _DATA_KEY_INFO, 32))
        self._active_master = master_keys[0]
        self._active_key_id = key_id_for(master_keys[0])
        self._active = self._ciphers[self._active_key_id]
        # The original design: AES-256-GCM keyed by SHA-256 of a key string.
        self._legacy = AESGCM(hashlib.sha256(legacy_key.encode("utf-8")).digest()) if legacy_key else None

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for another use (``purpose`` names it), independent of the data key."""
        return _hkdf(self._active_master, f"mcp-secrets v1 {purpose}".encode(), 32)

    @property
    def reads_legacy(self) -> bool:
        """True when a legacy key is configured, so the original format can be read."""
        return self._legacy is not None

    @property
    def active_key_id(self) -> str:
        """The key id new ciphertexts are written with."""
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this encryptor can read, the active one first."""
        return tuple(self._ciphers)

    def encrypt(self, value: str, *, username: str, server: str, key: str) -> str:
        """Encrypt ``value`` for the record (username, server, key) with the active key."""
        try:
            plain = value.encode("utf-8")
        except UnicodeEncodeError:
            # The exception would quote the value: replace it with one that names the field only.
            raise InvalidInputError("value must be valid Unicode text (it holds a lone surrogate)") from None
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._active.encrypt(nonce, plain, associated_data(username, server, key))
        return f"{VERSION}:{self._active_key_id}:{_b64encode(nonce + sealed)}"

    def decrypt(self, ciphertext: str, *, username: str, server: str, key: str) -> str:
        """Decrypt a stored ciphertext of the record (username, server, key).

        Raises:
            DecryptionError: tampered, moved from another record, written with a
                key that is not configured, or not a ciphertext at all.

        """
        parts = ciphertext.split(":")
        if len(parts) == 3 and parts[0] == VERSION:  # noqa: PLR2004 - the format has three fields
            return self._decrypt_v1(parts[1], parts[2], associated_data(username, server, key), (server, key))
        if len(parts) == 3 and all(part and set(part) <= _HEX_DIGITS for part in parts):  # noqa: PLR2004
            return self._decrypt_legacy(parts, _where((server, key)))
        raise DecryptionError(f"{_where((server, key))} is not in a ciphertext format mcp-secrets can read")

    def key_id_of(self, ciphertext: str) -> str:
        """The key id a stored ciphertext was written with (``legacy`` for the original format)."""
        parts = ciphertext.split(":")
        if len(parts) == 3 and parts[0] == VERSION:  # noqa: PLR2004
            return parts[1]
        return LEGACY_KEY_ID

    def _decrypt_v1(self, key_id: str, payload: str, aad: bytes, record: tuple[str, str]) -> str:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"{_where(record)} was encrypted with master key {key_id}, which is not configured"
            )
        raw = _b64decode_canonical(payload)
        if raw is None or len(raw) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(f"{_where(record)} is damaged: its ciphertext is malformed")
        try:
            plain = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                f"{_where(record)} does not decrypt: it was altered, or copied from another record"
            ) from None
        return _text(plain, record)

    def _decrypt_legacy(self, parts: list[str], where: str) -> str:
        if self._legacy is None:
            raise DecryptionError(f"{where} is in the legacy format and MCP_SECRETS_LEGACY_KEY is not set")
        try:
            iv, tag, body = (bytes.fromhex(part) for part in parts)
        except ValueError:
            raise DecryptionError(f"{where} is damaged: its legacy ciphertext is malformed") from None
        if len(tag) != TAG_BYTES or not 8 <= len(iv) <= 128:  # noqa: PLR2004 - GCM nonce bounds
            raise DecryptionError(f"{where} is damaged: its legacy ciphertext is malformed")
        try:
            plain = self._legacy.decrypt(iv, body + tag, None)
        except InvalidTag:
            raise DecryptionError(
                f"{where} does not decrypt with the legacy key: altered or wrong key"
            ) from None
        return _text(plain, where)
