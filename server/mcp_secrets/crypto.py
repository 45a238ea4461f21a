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
_LEGACY_IV_BYTES = (8, 128)  # the IV lengths AES-GCM takes here (cryptography's bounds)
_DATA_KEY_INFO = b"mcp-secrets v1 data key"
_KEY_ID_INFO = b"mcp-secrets v1 key id"
_AAD_LABEL = b"mcp-secrets v1 record"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_LOWER_HEX = frozenset("0123456789abcdef")
_KEY_ID_CHARS = 8  # 4 bytes of HKDF output, in lowercase hex
_V1_PREFIX_CHARS = len("v1:01234567:")
_MIN_PAYLOAD_CHARS = 38  # base64 of the shortest payload, nonce and tag: 28 bytes
_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# binascii reads standard base64 only. "+", "/" and "=" are not base64url: they become "!", so the
# decoder skips them like any other stray character instead of reading them as data or padding.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/!!!")
# By payload length mod 4: the padding binascii wants, and the characters that may end the payload. The
# last character of a partial group has unused low bits; the canonical spelling has them zero.
_TAILS: tuple[tuple[bytes, str], ...] = (
    (b"", _BASE64URL),
    (b"", ""),  # one character past a whole group holds no byte
    (b"==", _BASE64URL[::16]),  # 2 bits used, 4 unused
    (b"=", _BASE64URL[::4]),  # 4 bits used, 2 unused
)


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


def _where(record: tuple[str, str]) -> str:
    """How an error names a record (server, key); built only when there is an error."""
    server, key = record
    return f"secret {key!r} of server {server!r}"


def _is_legacy(parts: list[str]) -> bool:
    """Whether the ``:``-separated parts of a ciphertext have the original format's form: three hex fields.

    The last may be empty: the original design wrote an empty value as ``iv:authTag:``.
    """
    if len(parts) != 3:  # noqa: PLR2004
        return False
    iv, tag, body = parts
    return bool(iv) and bool(tag) and set(iv + tag + body) <= _HEX_DIGITS


def _is_v1(parts: list[str]) -> bool:
    """Whether the ``:``-separated parts of a ciphertext have the v1 form, a key id's included.

    Only then is the key id quoted in an error: text of another form may be anything, a plaintext even.
    """
    return (
        len(parts) == 3  # noqa: PLR2004
        and parts[0] == VERSION
        and len(parts[1]) == _KEY_ID_CHARS
        and set(parts[1]) <= _LOWER_HEX
    )


def is_legacy_ciphertext(ciphertext: str) -> bool:
    """Whether a stored ciphertext has the original design's ``iv:authTag:ciphertext`` form."""
    return _is_legacy(ciphertext.split(":"))


def _not_utf8(where: str) -> DecryptionError:
    """The error for a plaintext that is not UTF-8; a UnicodeDecodeError would carry its bytes.

    Raise it outside the ``except`` block that caught the codec's error: within it, ``from None`` hides that
    error from a printed traceback, but the new one still carries it as its ``__context__``.
    """
    return DecryptionError(f"{where} decrypted to bytes that are not UTF-8 text")


def _not_text(**arguments: object) -> InvalidInputError:
    """The error for the first argument that is not a ``str``; called once Python has refused one."""
    name, argument = next((name, a) for name, a in arguments.items() if not isinstance(a, str))
    return InvalidInputError(f"{name} must be text, not {type(argument).__name__}")


def _not_a_ciphertext(stored: object) -> str:
    """Why a stored ciphertext that is not a ``str`` cannot be read; only its type is named."""
    return f"damaged: its ciphertext is not text but {type(stored).__name__}"


def _hkdf(master_key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master_key)


def _derived(master_key: bytes, purpose: str) -> bytes:
    """A 32-byte key of ``master_key`` for the use ``purpose`` names."""
    return _hkdf(master_key, f"mcp-secrets v1 {purpose}".encode(), 32)


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
        self._masters = tuple(master_keys)
        self._active_master = master_keys[0]
        self._active_key_id = key_id_for(master_keys[0])
        self._active = self._ciphers[self._active_key_id]
        # Keyed by the whole "v1:<key id>:" prefix, so a read slices once instead of splitting.
        self._active_prefix = f"{VERSION}:{self._active_key_id}:"
        self._readers = {f"{VERSION}:{key_id}:": cipher for key_id, cipher in self._ciphers.items()}
        # The original design: AES-256-GCM keyed by SHA-256 of a key string.
        self._legacy = AESGCM(hashlib.sha256(legacy_key.encode("utf-8")).digest()) if legacy_key else None

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for another use (``purpose`` names it), independent of the data key."""
        return _derived(self._active_master, purpose)

    def derive_keys(self, purpose: str) -> list[bytes]:
        """``derive_key`` of each master key, the active one first: what an old key sealed still opens."""
        return [_derived(master_key, purpose) for master_key in self._masters]

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
        # Each exception holds the value (a codec's as its object, an AttributeError as its obj): the
        # refusal, naming the field only, is raised out of the block, so that it does not carry that
        # exception as its __context__ either.
        refusal = None
        try:
            plain = value.encode("utf-8")
            aad = associated_data(username, server, key)
        except UnicodeEncodeError:
            refusal = InvalidInputError("value must be valid Unicode text (it holds a lone surrogate)")
        except (AttributeError, TypeError):  # Python's own names an attribute, not the argument
            refusal = _not_text(value=value, username=username, server=server, key=key)
        if refusal is not None:
            raise refusal
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._active.encrypt(nonce, plain, aad)
        # One translate makes it base64url and drops padding and newline; base64's helpers cost twice that.
        encoded = binascii.b2a_base64(nonce + sealed).translate(_TO_URLSAFE, b"=\n")
        return self._active_prefix + encoded.decode("ascii")

    def decrypt(self, ciphertext: str, *, username: str, server: str, key: str) -> str:
        """Decrypt a stored ciphertext of the record (username, server, key).

        Raises:
            DecryptionError: tampered, moved from another record, written with a
                key that is not configured, or not a ciphertext at all.

        """
        # The v1 read is inline because it is the hot path, where each extra call shows. Whatever it
        # does not read goes to _read_other, which reads the legacy format or says what is wrong.
        try:
            aad = associated_data(username, server, key)
            cipher = self._readers.get(ciphertext[:_V1_PREFIX_CHARS])
        # An argument that is not text (bytes reach _read_other). A mapping sliced is a KeyError on 3.12+.
        except (AttributeError, KeyError, TypeError):
            if not all(isinstance(name, str) for name in (username, server, key)):
                raise _not_text(username=username, server=server, key=key) from None
            raise DecryptionError(f"{_where((server, key))} is {_not_a_ciphertext(ciphertext)}") from None
        if cipher is not None:
            chars = len(ciphertext) - _V1_PREFIX_CHARS
            padding, last = _TAILS[chars & 3]
            if chars >= _MIN_PAYLOAD_CHARS and ciphertext[-1] in last:
                try:
                    payload = ciphertext[_V1_PREFIX_CHARS:].encode("ascii").translate(_TO_STANDARD)
                    raw = binascii.a2b_base64(payload + padding)
                except ValueError:  # not ASCII, or binascii.Error
                    raw = b""
                # binascii skips stray characters, and each one skipped leaves fewer bytes than the
                # length promises: a full length means every character was base64url.
                if len(raw) == chars * 3 // 4:
                    try:
                        return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad).decode("utf-8")
                    except InvalidTag:
                        where = _where((server, key))
                        raise DecryptionError(
                            f"{where} does not decrypt: it was altered, or copied from another record"
                        ) from None
                    except UnicodeDecodeError:
                        pass  # refused out of this block, so that its error does not carry the plaintext
                    raise _not_utf8(_where((server, key)))
        return self._read_other(ciphertext, _where((server, key)))

    def key_id_of(self, ciphertext: str) -> str:
        """The key id a stored ciphertext was written with; ``legacy`` for any other form, none included.

        ``is_legacy_ciphertext`` tells the original format from a ciphertext of no format.
        """
        parts = ciphertext.split(":") if isinstance(ciphertext, str) else []
        return parts[1] if _is_v1(parts) else LEGACY_KEY_ID

    def unreadable_because(self, ciphertext: str) -> str | None:
        """Why a ciphertext cannot be read, judged by its form and the configured keys, without decrypting.

        None when it may be read; decrypting may still find it altered.
        """
        if not isinstance(ciphertext, str):
            return _not_a_ciphertext(ciphertext)
        parts = ciphertext.split(":")
        if _is_v1(parts):
            if parts[1] not in self._ciphers:
                return f"encrypted with master key {parts[1]}, which is not configured"
            return None
        if not _is_legacy(parts):
            return "not in a ciphertext format mcp-secrets can read"
        if self._legacy is None:
            return "in the legacy format and MCP_SECRETS_LEGACY_KEY is not set"
        return None

    def _read_other(self, ciphertext: str, where: str) -> str:
        """Read a legacy ciphertext, or raise the error that says why a ciphertext does not decrypt."""
        reason = self.unreadable_because(ciphertext)
        if reason is not None:
            raise DecryptionError(f"{where} is {reason}")
        parts = ciphertext.split(":")
        # A v1 ciphertext of a configured key: decrypt() refused its payload. (Without a legacy key,
        # a legacy ciphertext has a reason above; the test only narrows the type.)
        if parts[0] == VERSION or self._legacy is None:
            raise DecryptionError(f"{where} is damaged: its ciphertext is malformed")
        return _decrypt_legacy(self._legacy, parts, where)


def _decrypt_legacy(legacy: AESGCM, parts: list[str], where: str) -> str:
    try:
        iv, tag, body = (bytes.fromhex(part) for part in parts)
    except ValueError:
        raise DecryptionError(f"{where} is damaged: its legacy ciphertext is malformed") from None
    # Node.js's crypto, which wrote the format, takes an IV of 1 to 128 bytes and a tag of 4 to 16: a
    # record may be whole and still out of reach here, so say which length, not that it is damaged.
    if not _LEGACY_IV_BYTES[0] <= len(iv) <= _LEGACY_IV_BYTES[1]:
        raise DecryptionError(
            f"{where} is not readable: its legacy ciphertext has a {len(iv)}-byte IV, which mcp-secrets "
            f"cannot read ({_LEGACY_IV_BYTES[0]} to {_LEGACY_IV_BYTES[1]} bytes)"
        )
    if len(tag) != TAG_BYTES:
        raise DecryptionError(
            f"{where} is not readable: its legacy ciphertext has a {len(tag)}-byte authentication tag, which "
            f"mcp-secrets cannot read ({TAG_BYTES} bytes)"
        )
    try:
        plain = legacy.decrypt(iv, body + tag, None)
    except InvalidTag:
        raise DecryptionError(f"{where} does not decrypt with the legacy key: altered or wrong key") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        pass  # refused out of this block, so that its error does not carry the plaintext
    raise _not_utf8(where)
