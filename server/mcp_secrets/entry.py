"""One-time entry links: the user types a secret into a page of ours, out of the model's sight.

A link reads ``<base URL>/secrets/entry/<token>``. The token carries 256 random
bits and is stored only as its SHA-256, bound to (username, server, key); it
is single-use, expires after a few minutes, and is never logged (see
``logs.redact_tokens``). The page itself is in ``entry_page``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from mcp_secrets.errors import (
    EntryLinkError,
    InvalidInputError,
    StoreUnavailableError,
    UnreadableRecordError,
    WriteUnconfirmedError,
)
from mcp_secrets.secrets import Secrets, validate_name, validate_username, validate_value
from mcp_secrets.store import LINK_CLOCK_STEP, LimitReached, LinkRecord
from mcp_secrets.tokens import is_live

ENTRY_PATH = "/secrets/entry"
LINK_TTL = timedelta(minutes=10)
# Open links a user may have at once: far above a person's or a gateway's needs, and a bound on
# what a client calling request_secret in a loop can pile up in the store.
MAX_LIVE_LINKS = 200
LinkState = Literal["live", "used", "expired", "unknown"]
# Whether a link's value is in the store, may still come (the link is live, or being redeemed), or never will.
Submission = Literal["waiting", "stored", "gone"]
# What became of a link a submission claimed: "storing" until its value is in (or the link is given back).
ClaimOutcome = Literal["live", "storing", "stored", "gone"]
# What a declined link's claim keeps in place of a form's hash: no SHA-256, so no form's, and no value comes.
_DECLINED = "declined"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _new_claim_id() -> str:
    """A random id for one claim of a link: releasing it gives back that claim and no other."""
    return _random.token_hex(16)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _made_by(record: LinkRecord) -> str:
    """The audit detail of a value stored through a link: the link's id and the API token that made it."""
    if record.token_id is None:
        return f"entry link {record.link_id}"
    return f"entry link {record.link_id} of token {record.token_id}"


@dataclass(frozen=True)
class EntryLink:
    """A link just made: ``token`` is the only copy of its secret part."""

    token: str
    record: LinkRecord

    def url(self, base_url: str) -> str:
        """The link a user opens."""
        return f"{base_url.rstrip('/')}{ENTRY_PATH}/{self.token}"


class EntryLinks:
    """Make, inspect and redeem entry links; a redeemed link stores its secret through ``Secrets``."""

    def __init__(
        self, secrets: Secrets, *, ttl: timedelta = LINK_TTL, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.secrets = secrets
        self.ttl = ttl
        self._clock = clock

    def create(self, username: str, server: str, key: str, *, token_id: str | None = None) -> EntryLink:
        """A fresh link for one (username, server, key), valid for ``ttl``.

        ``token_id``: the API token of the caller asking for it; the link works only while that token does.
        """
        return self.create_many(username, server, [key], token_id=token_id)[0]

    def create_many(
        self,
        username: str,
        server: str,
        keys: Sequence[str],
        *,
        within: int | None = None,
        token_id: str | None = None,
    ) -> list[EntryLink]:
        """A fresh link for each of ``keys``: all of them, or none when they would pass the limit.

        The limit is ``MAX_LIVE_LINKS`` live links of the user, or ``within`` for a caller given a
        smaller share of them. ``token_id`` as for ``create``.
        """
        validate_username(username)
        validate_name("server", server)
        for key in keys:
            validate_name("key", key)
        limit = MAX_LIVE_LINKS if within is None else min(within, MAX_LIVE_LINKS)
        now = self._clock()
        links = [self._new(username, server, key, now, token_id) for key in keys]
        try:
            # Counted where they are inserted: calls at once cannot all take the last places.
            self.secrets.store.put_links([link.record for link in links], max_live=limit)
        except LimitReached:
            raise InvalidInputError(
                f"{username} has too many entry links open to make {len(keys)} more "
                f"({limit} at most): use some, or wait for them to expire"
            ) from None
        return links

    def _new(self, username: str, server: str, key: str, now: datetime, token_id: str | None) -> EntryLink:
        token = _random.token_urlsafe(32)
        record = LinkRecord(
            link_id=_random.token_hex(8),
            link_hash=_hash(token),
            username=username,
            server=server,
            key=key,
            created_at=now,
            expires_at=now + self.ttl,
            token_id=token_id,
        )
        return EntryLink(token, record)

    def find(self, token: str) -> tuple[LinkRecord | None, LinkState]:
        """The link of ``token`` and whether it is live, used, expired or unknown."""
        if not 16 <= len(token) <= 100 or not token.isascii():  # noqa: PLR2004 - far around 43
            return None, "unknown"
        link_hash = _hash(token)
        record = self.secrets.store.find_link(link_hash)
        # The lookup is by hash; compare again in constant time rather than trust the index.
        if record is None or not hmac.compare_digest(record.link_hash, link_hash):
            return None, "unknown"
        if record.used_at is not None:
            return record, "used"
        now = self._clock()
        if (
            record.expires_at <= now
            or record.created_at > now + LINK_CLOCK_STEP
            or not self._made_by_live_token(record, now)
        ):
            return record, "expired"
        return record, "live"

    def _made_by_live_token(self, record: LinkRecord, now: datetime) -> bool:
        """Whether the API token that made the link still works; True for a link that names none.

        A token revoked (it leaked) or expired takes its links with it: they would still write its user's
        secrets otherwise, for as long as they live.
        """
        if record.token_id is None:
            return True
        try:
            token = self.secrets.store.find_token_by_id(record.token_id)
        except UnreadableRecordError:
            return False  # refused, as the token itself is, until its record is corrected
        return token is not None and is_live(token, now)

    def submit(self, token: str, value: str, *, form: str | None = None) -> LinkRecord:
        """Store ``value`` for the link's own record and use the link up.

        ``form``: the CSRF token of the submitting form; only its hash is kept, to tell a post of the same
        form (``stored_by_form``) from another's.

        Raises:
            InvalidInputError: the value is empty, too long or not text; the link stays live.
            EntryLinkError: the link is unknown, expired or used.

        """
        validate_value(value)
        record, state = self.find(token)
        if record is None or state != "live":
            raise EntryLinkError("this link is not valid", gone=state in ("used", "expired"))
        # Claim first, so two submissions of one link cannot both store; give it back if storing fails.
        # Only this claim, by its own id: another submission's claim, which stored, must stay, and its
        # time may equal this one's (MongoDB keeps milliseconds).
        claim_id = _new_claim_id()
        try:
            claimed = self.secrets.store.claim_link(
                record.link_hash, self._clock(), claim_id, form=None if form is None else _hash(form)
            )
        except WriteUnconfirmedError:
            # Perhaps made: given back, so a second try can store, instead of finding the link used up.
            with suppress(StoreUnavailableError):
                self.secrets.store.release_link(record.link_hash, claim_id)
            raise
        if not claimed:
            raise EntryLinkError("this link has just been used or has expired", gone=True)
        try:
            self.secrets.set_secret(
                record.username, record.server, record.key, value, via="entry-page", detail=_made_by(record)
            )
        except BaseException:
            # Given back if the store lets it be; either way, the error the user sees is the write's own.
            with suppress(StoreUnavailableError):
                self.secrets.store.release_link(record.link_hash, claim_id)
            raise
        return record

    def stored_by_form(self, record: LinkRecord, form: str) -> bool:
        """Whether the link of ``record`` was claimed by a submission of the form of CSRF token ``form``.

        False for a link claimed without a form, or before claims recorded theirs: the caller cannot
        tell that post from another's.
        """
        return record.claimed_by is not None and hmac.compare_digest(record.claimed_by, _hash(form))

    def resume(self, token: str, username: str) -> EntryLink:
        """The link of a ``request_secret`` round trip, which must belong to ``username``."""
        record, _ = self.find(token)
        if record is None or record.username != username:
            raise EntryLinkError("this entry request is not valid", gone=False)
        return EntryLink(token, record)

    def cancel(self, token: str) -> None:
        """Use a link up without storing anything (the user declined)."""
        record, state = self.find(token)
        if record is not None and state == "live":
            self.secrets.store.claim_link(record.link_hash, self._clock(), _new_claim_id(), form=_DECLINED)

    def submission(self, token: str) -> Submission:
        """Whether the value of the link of ``token`` is stored, may still come, or never will.

        A submission claims its link before it writes the value, and gives the link back when the
        write fails: a used link alone does not mean the value is stored, until its record shows a
        write since the claim.
        """
        outcome = self.claim_outcome(token)
        if outcome == "live" or outcome == "storing":  # noqa: PLR1714 - so that mypy narrows it
            return "waiting"
        return outcome

    def claim_outcome(self, token: str, *, stale_after: timedelta | None = None) -> ClaimOutcome:
        """What became of the link of ``token``: live, claimed with its value not in yet, stored, or gone.

        A link declined (``cancel``) is "gone" at once. "storing" is also what a link whose claimer died
        stays; with ``stale_after``, a claim older than that is taken for one, and is "gone".
        """
        record, state = self.find(token)
        if record is None or state in ("expired", "unknown"):
            return "gone"
        if record.used_at is None:
            return "live"
        for stored in self.secrets.store.find_secrets(record.username, record.server):
            if stored.key == record.key and stored.updated_at >= record.used_at:
                return "stored"
        if record.claimed_by == _DECLINED:
            return "gone"
        if stale_after is not None and record.used_at <= self._clock() - stale_after:
            return "gone"
        return "storing"

    def state(self, token: str) -> LinkState:
        """Whether the link of ``token`` is live, used, expired or unknown."""
        return self.find(token)[1]
