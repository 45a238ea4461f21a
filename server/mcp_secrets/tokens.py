"""API tokens: made by ``mcp-secrets token create``, shown once, stored only as a hash.

A token reads ``mcps_<token id>_<random>``. The token id is public (it is what
``token list`` shows and ``token revoke`` takes); the random part carries 256
bits, so a plain SHA-256 of the whole token is a safe lookup key, as for
GitHub's or Stripe's API tokens: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets as _random
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NoReturn

from mcp_secrets.errors import (
    InvalidInputError,
    SecretNotFoundError,
    SecretsError,
    StoreUnavailableError,
    UnreadableRecordError,
    WriteUnconfirmedError,
)
from mcp_secrets.secrets import validate_username
from mcp_secrets.store import UNCONFIRMED, AuditEvent, SecretStore, TokenRecord

TOKEN_PREFIX = "mcps_"  # noqa: S105 - a public prefix, not a token
MAX_LABEL_LENGTH = 200
# Not naming the id: a user may have pasted a whole token as one.
NO_LIVE_TOKEN = "there is no live token with that id (see `mcp-secrets token list`)"  # noqa: S105 - a message


def hash_token(token: str) -> str:
    """The lookup key stored in place of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``token`` is shown to its owner once and never stored."""

    record: TokenRecord
    token: str


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ApiTokens:
    """Create, list, revoke and verify API tokens kept in a ``SecretStore``."""

    def __init__(
        self, store: SecretStore, *, clock: Callable[[], datetime] = _utcnow, via: str = "cli"
    ) -> None:
        self.store = store
        self._clock = clock
        self.via = via

    def create(self, username: str, *, label: str = "", expires_in: timedelta | None = None) -> NewToken:
        """Make a token for ``username``; the returned string is the only copy."""
        record, token = self._new(username, label, expires_in)
        self._put(record, first=False)
        return self._recorded(record, token)

    def create_first(self, username: str, *, label: str = "") -> NewToken | None:
        """Make a token for ``username`` while the store holds none; None when it holds one.

        Servers started at once on a new store all find none: the store puts only one of their tokens,
        so that one token is made and shown, not one per server.
        """
        if self.has_any():
            return None
        record, token = self._new(username, label, None)
        if not self._put(record, first=True):
            return None
        return self._recorded(record, token)

    def _new(self, username: str, label: str, expires_in: timedelta | None) -> tuple[TokenRecord, str]:
        """A new token and its record, not yet stored."""
        validate_username(username)
        if len(label) > MAX_LABEL_LENGTH or not label.isprintable():
            raise InvalidInputError(f"label must be at most {MAX_LABEL_LENGTH} printable characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInputError("expiry must be in the future")
        now = self._clock()
        token_id = _random.token_hex(5)
        token = f"{TOKEN_PREFIX}{token_id}_{_random.token_urlsafe(32)}"
        record = TokenRecord(
            token_id=token_id,
            username=username,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            label=label,
        )
        return record, token

    def _put(self, record: TokenRecord, *, first: bool) -> bool:
        """Store ``record`` (with ``first``, only while the store holds no token); whether it was."""
        try:
            return self.store.put_token(record, first=first)
        except WriteUnconfirmedError:
            self._revoke_unshown(record, f"its creation was {UNCONFIRMED}", WriteUnconfirmedError)

    def _recorded(self, record: TokenRecord, token: str) -> NewToken:
        """The new token, once its audit event is written."""
        try:
            self.store.add_event(
                AuditEvent(
                    record.created_at,
                    record.username,
                    "token-created",
                    detail=f"token {record.token_id}",
                    transport=self.via,
                )
            )
        except StoreUnavailableError as exc:
            self._revoke_unshown(record, "its audit event could not be written", StoreUnavailableError, exc)
        return NewToken(record, token)

    def _revoke_unshown(
        self,
        record: TokenRecord,
        why: str,
        error: type[StoreUnavailableError],
        cause: StoreUnavailableError | None = None,
    ) -> NoReturn:
        """Revoke a new token that will not be shown (``why``; the store's error ``cause``); raise ``error``.

        It may be live, and nobody would ever hold it or see it listed with its event: revoked at once,
        it cannot stay so. The caller makes another.
        """
        now = self._clock()
        token_id = record.token_id
        try:
            revoked = self.store.revoke_token(token_id, now)
        except StoreUnavailableError:
            raise error(
                f"the new token {token_id} was not shown: {why}, and it could not be revoked; revoke token "
                f"{token_id} (`mcp-secrets token revoke {token_id}`), then create another"
            ) from None
        done = "it was revoked" if revoked is not None else "it is not in the store"
        if revoked is not None:
            detail = f"token {token_id}; {why}, so it was revoked, never shown"
            event = AuditEvent(now, record.username, "token-revoked", detail=detail, transport=self.via)
            try:
                self.store.add_event(event)
            except StoreUnavailableError:
                # Revoked all the same: told to revoke it, the operator would be told there is no live token.
                done = "it was revoked, but its revocation's audit event could not be written either"
        said = "" if cause is None else f" ({cause})"
        raise error(f"the new token {token_id} was not shown: {why}; {done}; create another{said}")

    def list(self, username: str | None = None) -> list[TokenRecord]:
        """Every token record, of one user when given; hashes only."""
        return self.store.list_tokens(None if username is None else validate_username(username))

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a live token by its id (or by the whole token); ``SecretNotFoundError`` if none."""
        if token_id.startswith(TOKEN_PREFIX):
            token_id = token_id.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
        now = self._clock()
        try:
            record = self.store.revoke_token(token_id, now)
        except WriteUnconfirmedError as exc:
            raise self._unconfirmed_revocation(token_id, now, made=exc.made) from None
        except UnreadableRecordError as exc:
            # Revoked: only its record, which another tool left of the wrong shape, could not be read back.
            raise self._revoked_unreadable(token_id, now, exc) from None
        if record is None:
            # Not echoed: a user may have pasted a whole token here.
            raise SecretNotFoundError(NO_LIVE_TOKEN)
        try:
            self._record_revocation(record, now, f"token {token_id}")
        except StoreUnavailableError as exc:
            # Revoked all the same: told only "failed", and then "no live token" on a second try, the
            # operator would take it for a revocation that did not happen, and never see it recorded.
            unrecorded: StoreUnavailableError | None = exc
        else:
            unrecorded = None
        # Its open entry links would hold places of its user's link limit until they expire. Only that:
        # each is refused as soon as its token is dead, so a failure here leaves no link working.
        with suppress(StoreUnavailableError):
            self.store.end_token_links(token_id, now)
        if unrecorded is not None:
            raise type(unrecorded)(
                f"token {token_id} was revoked, but writing its audit event failed: {unrecorded}"
            ) from None
        return record

    def _unconfirmed_revocation(self, token_id: str, now: datetime, *, made: bool) -> SecretsError:
        """The error of a revocation at ``now`` not confirmed by the database, recorded if it was made.

        ``made`` False: the connection failed once the revocation was sent, so it may not have been made.
        """
        # Made on the database, and likely to last: the trail records it, saying it is unconfirmed.
        said = (
            "the token was revoked but the database did not confirm it as its write concern asks"
            if made
            else "the connection to the database failed during the revocation, so the token may or may not "
            "have been revoked"
        )
        try:
            # Its record is read by its id: the unconfirmed write returned none.
            found = self.store.find_token_by_id(token_id)
        except StoreUnavailableError:
            recorded = "; its audit event could not be written"
        else:
            if _revoked_before(found, now):
                # The database waits for the write concern of a write that matched nothing too.
                return SecretNotFoundError(NO_LIVE_TOKEN)
            if not made and found is not None and found.revoked_at is None:
                # Read back live: the revocation was not made, and the trail must not say it was.
                return WriteUnconfirmedError(
                    "the connection to the database failed during the revocation, and the token was still "
                    "live when read back: revoke it again (once that says there is no live token with that "
                    "id, it is revoked)",
                    made=False,
                )
            if not made:
                said = "the token was revoked, but the connection to the database failed before it answered"
            try:
                self._record_revocation(found, now, f"token {token_id}; {UNCONFIRMED}")
                recorded = ""
            except StoreUnavailableError:
                recorded = "; its audit event could not be written"
        return WriteUnconfirmedError(
            f"{said}: treat the token as revoked, and revoke it again (once that says there is no live "
            f"token with that id, the revocation is confirmed){recorded}",
            made=made,
        )

    def _revoked_unreadable(
        self, token_id: str, now: datetime, exc: UnreadableRecordError
    ) -> UnreadableRecordError:
        """The error for a token revoked whose record cannot be read, once its revocation is recorded."""
        owner = None if exc.record is None else exc.record[1]  # (token_id, username): its names
        recorded = "" if owner is not None else "; its audit event could not be written: it names no user"
        if owner is not None:
            detail = f"token {token_id}; its record cannot be read"
            event = AuditEvent(now, owner, "token-revoked", detail=detail, transport=self.via)
            try:
                self.store.add_event(event)
            except StoreUnavailableError:
                recorded = "; its audit event could not be written"
        return UnreadableRecordError(f"token {token_id} was revoked, but {exc}{recorded}", record=exc.record)

    def _record_revocation(self, record: TokenRecord | None, now: datetime, detail: str) -> None:
        """Write a revocation's audit event, as its token's owner's; none for a token no longer there."""
        if record is not None:
            event = AuditEvent(now, record.username, "token-revoked", detail=detail, transport=self.via)
            self.store.add_event(event)

    def verify(self, token: str) -> TokenRecord | None:
        """The live record of ``token``, or None if it is unknown, revoked or expired."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:  # noqa: PLR2004 - far above a real token
            return None
        record = self.store.find_token(hash_token(token))
        return record if record is not None and is_live(record, self._clock()) else None

    def live_ids(self, username: str) -> set[str]:
        """The ids of ``username``'s tokens that still work: neither revoked nor expired."""
        now = self._clock()
        return {record.token_id for record in self.store.list_tokens(username) if is_live(record, now)}

    def has_any(self) -> bool:
        """True once any token, live or revoked, exists.

        Read from one row, which is not decoded: one that another tool left unreadable is still a token,
        so a server starts over it, offering no new one.
        """
        return self.store.has_tokens()


def _revoked_before(record: TokenRecord | None, now: datetime) -> bool:
    """Whether no revocation at ``now`` can have been made: no such token, or one revoked at another time.

    To the millisecond, as MongoDB keeps a time.
    """
    if record is None:
        return True
    return record.revoked_at is not None and abs(record.revoked_at - now) >= timedelta(milliseconds=1)


def is_live(record: TokenRecord, now: datetime) -> bool:
    """Whether a token still works at ``now``: neither revoked nor expired."""
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > now)
