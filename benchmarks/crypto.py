"""What SecretEncryptor costs over bare AES-256-GCM, for a 64-byte value.

    .venv/bin/python benchmarks/crypto.py [--blocks 21] [--calls 2000]

Subject: ``SecretEncryptor.encrypt`` then ``decrypt`` of a 64-byte value (text
in, text out: UTF-8, the record's associated data, base64url, the ``v1:<key id>:``
prefix and its parsing), called with its keywords spelled out as ``Secrets``
calls it; unpacking a dict into them (``**record``) adds about 1 µs per call on
this machine, a cost of the caller's style rather than of the encryptor. Floor:
a bare ``AESGCM`` (built once) encrypting and decrypting the same 64 bytes with
a fresh ``os.urandom(12)`` nonce and no associated data. The ratio is project
time ÷ bare time, the median of block pairs (lower is better; target ≤ 1.5).
The two halves are also shown apart.

Two reference rows show what the target leaves room for. Each is the least
code a token needs: a binary token (a constant 5-byte prefix standing for the
version and key id, the nonce, the ciphertext), no checks, no error mapping,
UTF-8 in and out. One binds the ciphertext to its record with associated data
(looked up in the same cache as the encryptor's), as the tamper requirement
needs; the other does not bind it. They are not the project's code: they show
how much of the ratio any record-bound encryptor written in Python pays.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from _harness import block_pairs_sync, machine, micros, table, verdict
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_secrets.crypto import SecretEncryptor, associated_data

VALUE = "s" * 64  # 64 bytes in UTF-8
USERNAME, SERVER, KEY = "alice", "github", "GITHUB_TOKEN"
TARGET = 1.5


def least_tokens(aes: AESGCM) -> tuple[Callable[[], None], Callable[[], None]]:
    """The reference round trips: the least code a token needs, bound to its record and not."""
    prefix = b"\x01" + os.urandom(4)  # stands for the version byte and a 4-byte key id

    def bound() -> None:
        nonce = os.urandom(12)
        token = (
            prefix + nonce + aes.encrypt(nonce, VALUE.encode("utf-8"), associated_data(USERNAME, SERVER, KEY))
        )
        aes.decrypt(token[5:17], token[17:], associated_data(USERNAME, SERVER, KEY)).decode("utf-8")

    def unbound() -> None:
        nonce = os.urandom(12)
        token = prefix + nonce + aes.encrypt(nonce, VALUE.encode("utf-8"), None)
        aes.decrypt(token[5:17], token[17:], None).decode("utf-8")

    return bound, unbound


def main(blocks: int, calls: int) -> None:
    """Measure the round trip and each half, then print the table."""
    encryptor = SecretEncryptor([os.urandom(32)])
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    plain = VALUE.encode("utf-8")
    sealed_nonce = os.urandom(12)
    sealed = aes.encrypt(sealed_nonce, plain, None)
    token = encryptor.encrypt(VALUE, username=USERNAME, server=SERVER, key=KEY)

    def bare_round_trip() -> None:
        nonce = os.urandom(12)
        aes.decrypt(nonce, aes.encrypt(nonce, plain, None), None)

    def project_round_trip() -> None:
        encryptor.decrypt(
            encryptor.encrypt(VALUE, username=USERNAME, server=SERVER, key=KEY),
            username=USERNAME,
            server=SERVER,
            key=KEY,
        )

    def bare_encrypt() -> None:
        aes.encrypt(os.urandom(12), plain, None)

    def project_encrypt() -> None:
        encryptor.encrypt(VALUE, username=USERNAME, server=SERVER, key=KEY)

    def bare_decrypt() -> None:
        aes.decrypt(sealed_nonce, sealed, None)

    def project_decrypt() -> None:
        encryptor.decrypt(token, username=USERNAME, server=SERVER, key=KEY)

    least_bound_round_trip, least_unbound_round_trip = least_tokens(aes)

    if encryptor.decrypt(token, username=USERNAME, server=SERVER, key=KEY) != VALUE:
        raise RuntimeError("the round trip does not give the value back")
    rows = []
    for name, bare, project, target in (
        ("encrypt + decrypt", bare_round_trip, project_round_trip, TARGET),
        ("  encrypt alone", bare_encrypt, project_encrypt, None),
        ("  decrypt alone", bare_decrypt, project_decrypt, None),
        ("reference: least record-bound token", bare_round_trip, least_bound_round_trip, None),
        ("reference: least token, not bound", bare_round_trip, least_unbound_round_trip, None),
    ):
        pairs = block_pairs_sync(bare, project, blocks=blocks, calls=calls)["wall"]
        ratio = pairs.cost_ratio()
        rows.append(
            [
                name,
                micros(pairs.floor_median),
                micros(pairs.subject_median),
                str(ratio),
                "" if target is None else f"≤ {target}",
                "" if target is None else verdict(ratio.median, target, higher_is_better=False),
            ]
        )
    table(
        ["64-byte value", "bare AESGCM", "measured", "ratio median (p25-p75)", "target", ""],
        rows,
        title=f"SecretEncryptor ÷ bare AESGCM, {blocks} block pairs of {calls} calls ({machine()})",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=21, help="block pairs (default 21)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per block (default 2000)")
    options = parser.parse_args()
    main(options.blocks, options.calls)
