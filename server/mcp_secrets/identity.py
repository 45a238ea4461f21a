"""Who is calling: the local user on stdio, a verified bearer token on HTTP.

The username always comes from here, never from tool arguments or headers.
"""

from __future__ import annotations

import logging
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.mcpserver import Context

from mcp_secrets.errors import (
    InvalidInputError,
    SecretsError,
    StoreUnavailableError,
    UnauthorisedError,
    UnreadableRecordError,
)
from mcp_secrets.offload import run_store_work
from mcp_secrets.secrets import validate_username
from mcp_secrets.tokens import TOKEN_PREFIX, ApiTokens

if TYPE_CHECKING:
    from jwt import PyJWK

logger = logging.getLogger(__name__)

API_TOKEN_ISSUER = "mcp-secrets"  # noqa: S105 - an issuer name, not a password
API_TOKEN_CLIENT = "api-token:"  # noqa: S105 - the prefix of an API token's client id, then its id
# Asymmetric algorithms only: a JWKS publishes public keys, and "none" or HMAC must never verify.
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class Identity(Protocol):
    """Tells the tools which user a request acts for."""

    def username(self, ctx: Context[Any, Any]) -> str:
        """The caller's username; ``UnauthorisedError`` when there is none."""
        ...


class LocalIdentity:
    """stdio: one local user per process."""

    def __init__(self, username: str) -> None:
        self._username = validate_username(username)

    def username(self, ctx: Context[Any, Any]) -> str:  # noqa: ARG002 - same for every request
        """The process's user."""
        return self._username


class BearerIdentity:
    """HTTP: the subject of the bearer token the SDK's middleware verified for this request."""

    def username(self, ctx: Context[Any, Any]) -> str:
        """The verified token's username."""
        access_token = _request_access_token(ctx) or get_access_token()
        if access_token is None or not access_token.subject:
            raise UnauthorisedError("this request carries no verified bearer token")
        return access_token.subject


def api_token_id(ctx: Context[Any, Any] | None) -> str | None:
    """The id of the API token the request of ``ctx`` carries; None for a JWT, or without a token (stdio)."""
    access_token = (None if ctx is None else _request_access_token(ctx)) or get_access_token()
    if access_token is None or (access_token.claims or {}).get("iss") != API_TOKEN_ISSUER:
        return None
    client_id = access_token.client_id
    return client_id.removeprefix(API_TOKEN_CLIENT) if client_id.startswith(API_TOKEN_CLIENT) else None


def _request_access_token(ctx: Context[Any, Any]) -> AccessToken | None:
    """The token verified for the HTTP request that carried this message, if any."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user.access_token if isinstance(user, AuthenticatedUser) else None


class TokenCheckOutage:
    """Marks an HTTP request whose token could not be judged: what it needed was unavailable."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None


# Set for each HTTP request by web.OutageAnswer. The SDK's bearer middleware awaits the verifier in the
# request's own task (a worker thread gets a copy of its context), so a verifier marks that request.
TOKEN_CHECK_OUTAGE: ContextVar[TokenCheckOutage | None] = ContextVar("mcp_secrets_token_check", default=None)


def _note_outage(reason: str) -> None:
    """Say why the token of the request being checked could not be judged."""
    outage = TOKEN_CHECK_OUTAGE.get()
    if outage is not None:
        outage.reason = reason


class ApiTokenVerifier:
    """Accepts tokens made by ``mcp-secrets token create``: live, unexpired, not revoked."""

    def __init__(self, tokens: ApiTokens) -> None:
        self._tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's access info, or None."""
        try:
            record = await run_store_work(self._tokens.store, lambda: self._tokens.verify(token))
        except SecretsError as exc:
            logger.warning("API token could not be checked: %s", exc)
            # A record of the wrong shape (it names itself in the log) fails every check alike: refused
            # (401) until someone corrects it, where "unavailable" (503) would ask for retries in vain.
            if isinstance(exc, StoreUnavailableError) and not isinstance(exc, UnreadableRecordError):
                _note_outage("the secret store is unavailable")
            return None
        if record is None:
            return None
        return AccessToken(
            token=token,
            client_id=f"{API_TOKEN_CLIENT}{record.token_id}",
            scopes=[],
            expires_at=None if record.expires_at is None else int(record.expires_at.timestamp()),
            subject=record.username,
            claims={"iss": API_TOKEN_ISSUER},
        )


JWKS_LIFESPAN_SECONDS = 300.0  # how long a fetched key set is trusted before it is fetched again
# How far the provider's clock may run ahead of ours: a token it has just issued is valid from its "now"
# (iat, nbf), which on our clock can be a few seconds away yet.
JWT_CLOCK_SKEW_SECONDS = 60
JWKS_FETCH_SECONDS = 10.0
# After a failed fetch of the key set, JWTs are left unjudged (503) for this long without another: each
# request with any JWT-shaped text would otherwise fetch the provider's key set and log a warning.
JWKS_RETRY_SECONDS = 5.0
# After a fetch of the key set for a key id it lacked (a provider's new key), the next such fetch waits
# this long, whatever the first brought: anyone can send a token naming a key id the provider never had.
JWKS_REFETCH_SECONDS = 30.0
# Worker threads JWT checks may hold at once. A check may wait on the provider for a fetch of its keys;
# any request can make one (a JWT-shaped header is enough), so they must not take the threads the store
# calls of every other request need.
JWT_CHECK_THREADS = 4
# The "typ" header values of a JWT access token, lower case: RFC 9068's, and the generic one.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "jwt"})


class JwtVerifier:
    """Accepts JWTs signed by a key of an OIDC provider's JWKS, for one issuer and audience."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        username_claim: str = "sub",
        keys_lifespan: float = JWKS_LIFESPAN_SECONDS,
        fetch_timeout: float = JWKS_FETCH_SECONDS,
        fetch_retry: float = JWKS_RETRY_SECONDS,
    ) -> None:
        import jwt  # noqa: PLC0415 - only servers that accept JWTs pay for importing it

        # Keys are found in the key set, which is fetched again once it is older than its lifespan; no
        # cache of single keys (cache_keys), which never expires, so a key the provider withdraws (it
        # leaked) is refused here within the lifespan rather than accepted until a restart.
        self._jwks = jwt.PyJWKClient(
            jwks_url, cache_keys=False, lifespan=keys_lifespan, timeout=fetch_timeout
        )
        # For the log: a URL's query (or user info) may carry a credential of the provider's.
        parts = urlsplit(jwks_url)
        self._jwks_place = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        self._issuer = issuer
        self._audience = audience
        self._username_claim = username_claim
        self._threads: anyio.CapacityLimiter | None = None  # made on the event loop that uses it
        self._fetch_retry = fetch_retry
        self._unfetched_until = 0.0  # monotonic time until which a failed fetch is not tried again
        self._refetched_at = -JWKS_REFETCH_SECONDS  # monotonic time of the last fetch for an unknown key id
        self._refetch_lock = threading.Lock()

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's access info, or None when its signature, issuer, audience or expiry is wrong."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(JWT_CHECK_THREADS)
        return await anyio.to_thread.run_sync(self._verify, token, limiter=self._threads)

    def _verify(self, token: str) -> AccessToken | None:  # noqa: PLR0911 - one return per reason to refuse
        import jwt  # noqa: PLC0415 - imported once by __init__; this is a dictionary lookup

        try:
            # Text that is no JWT at all is refused without the key set.
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            logger.info("JWT refused: %s", type(exc).__name__)
            return None
        # While the provider fails (a moment ago), the key set it gave before is used as long as it lasts.
        cache = self._jwks.jwk_set_cache
        if time.monotonic() < self._unfetched_until and (cache is None or cache.get() is None):
            _note_outage(_KEY_SET_OUTAGE)
            return None
        try:
            # A fault of the key set's own, JSON that is no key set or holds no signing key, is the
            # provider's and leaves the token unjudged, as no answer does; so does a body not JSON
            # (ValueError: a maintenance page, a body cut short).
            kid = header.get("kid")
            signing_key = self._signing_key(kid if isinstance(kid, str) else "")
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, ValueError) as exc:
            self._unjudged(exc)
            return None
        if signing_key is None:
            if time.monotonic() < self._unfetched_until:  # the provider may have a new key it cannot give
                _note_outage(_KEY_SET_OUTAGE)
            else:
                logger.info("JWT refused: its kid names no key of the provider's")
            return None
        try:
            # The header with the claims: its typ is checked below, and this reads the token once.
            decoded: dict[str, Any] = jwt.decode_complete(
                token,
                signing_key,
                algorithms=JWT_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=JWT_CLOCK_SKEW_SECONDS,
            )
        except jwt.PyJWTError as exc:
            logger.info("JWT refused: %s", type(exc).__name__)
            return None
        # Signed, so the provider set it: a JWT typed as anything but an access token (a logout or DPoP
        # proof token, RFC 8725 3.11) is not one, whatever its claims. Many providers type theirs "JWT".
        claims: dict[str, Any] = decoded["payload"]
        typ = decoded["header"].get("typ", "JWT")
        if type(typ) is not str or typ.lower().removeprefix("application/") not in ACCESS_TOKEN_TYPES:
            logger.info("JWT refused: its typ header is not an access token's")
            return None
        # PyJWT grants the leeway to exp too; expiry stays exact, as the SDK's bearer middleware keeps it.
        if int(claims["exp"]) <= time.time():
            logger.info("JWT refused: ExpiredSignatureError")
            return None
        username = self._username_in(claims)
        if username is None:
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp") or claims.get("client_id") or username),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self._audience,
            subject=username,
            claims={"iss": claims["iss"]},
        )

    def _signing_key(self, kid: str) -> PyJWK | None:
        """The provider's key ``kid`` names, from its key set while that lasts; None when it has none.

        A key id the key set lacks fetches it again (a new key), at most once in ``JWKS_REFETCH_SECONDS``
        and not while the provider fails.
        """
        key = self._jwks.match_kid(self._jwks.get_signing_keys(), kid)
        if key is not None:
            return key
        with self._refetch_lock:
            now = time.monotonic()
            if now < self._unfetched_until or now < self._refetched_at + JWKS_REFETCH_SECONDS:
                return None
            self._refetched_at = now  # before fetching: a fetch that fails waits as long
        return self._jwks.match_kid(self._jwks.get_signing_keys(refresh=True), kid)

    def _unjudged(self, exc: Exception) -> None:
        """Say why the key set could not be had; the HTTP layer answers 503 (try again), not 401."""
        self._unfetched_until = time.monotonic() + self._fetch_retry
        logger.warning("the JWKS could not be fetched from %s: %s", self._jwks_place, _fetch_problem(exc))
        _note_outage(_KEY_SET_OUTAGE)

    def _username_in(self, claims: dict[str, Any]) -> str | None:
        """The username the configured claim holds; None (logged) when it holds none."""
        username = claims.get(self._username_claim)
        if type(username) is not str:
            logger.info("JWT refused: no string claim %r", self._username_claim)
            return None
        try:
            validate_username(username)
        except InvalidInputError:
            logger.info("JWT refused: claim %r is not a valid username", self._username_claim)
            return None
        return username


_KEY_SET_OUTAGE = "the identity provider's key set cannot be fetched"


def _fetch_problem(exc: BaseException) -> str:
    """Why the key set was not fetched (an HTTP status, a timeout, a refused connection), without its URL."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc  # PyJWT wraps urllib's error
    if isinstance(cause, HTTPError):
        return f"HTTP {cause.code}"
    reason = cause.reason if isinstance(cause, URLError) else cause
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ValueError):  # a maintenance page, a body cut short
        return "the answer is not JSON"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()  # connection refused, name or service not known, ...
    if cause is exc and not isinstance(exc, OSError):  # PyJWT's own: JSON, but no key set of signing keys
        return "the answer is not a key set with signing keys"
    return type(reason).__name__


class EitherVerifier:
    """API tokens by their prefix, everything else as a JWT."""

    def __init__(self, api_tokens: TokenVerifier, jwts: TokenVerifier) -> None:
        self._api_tokens = api_tokens
        self._jwts = jwts

    async def verify_token(self, token: str) -> AccessToken | None:
        """Verify with the verifier this kind of token belongs to."""
        verifier = self._api_tokens if token.startswith(TOKEN_PREFIX) else self._jwts
        return await verifier.verify_token(token)
