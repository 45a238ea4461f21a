"""Who is calling: the local user on stdio, API tokens and JWTs on HTTP, and the bearer identity."""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import pwd
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from conftest import jwks_provider, serving_jwks
from mcp_secrets import identity
from mcp_secrets.errors import InvalidInputError, UnauthorisedError
from mcp_secrets.identity import (
    JWT_CHECK_THREADS,
    TOKEN_CHECK_OUTAGE,
    ApiTokenVerifier,
    BearerIdentity,
    EitherVerifier,
    JwtVerifier,
    LocalIdentity,
    TokenCheckOutage,
)
from mcp_secrets.local_user import local_username
from mcp_secrets.store.sqlite import SQLiteStore
from mcp_secrets.tokens import ApiTokens, NewToken
from test_store import alter_stored

ISSUER = "https://id.example.com/"
AUDIENCE = "https://secrets.example.com/mcp"
KID = "key-2025"
T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)


def _context(request: object = None) -> Any:
    """The little of an MCP ``Context`` that ``BearerIdentity`` reads."""
    return SimpleNamespace(request_context=SimpleNamespace(request=request))


# --- the local user -------------------------------------------------------------------------------

MCP_STYLE_USERNAMES = ["alice", "alice@example.com", "svc-bot_01.prod", "ci.runner-7", "A" * 128]
# Subjects of common OIDC providers: Auth0's (strategy|id, strategy|connection|id), Okta's, Google's,
# Entra ID's pairwise one, Keycloak's and Cognito's UUIDs.
PROVIDER_SUBJECTS = [
    "auth0|5f7c8ec7c33c6c004bbafe82",
    "google-oauth2|103547991597142817347",
    "samlp|Customer1|jane@example.com",
    "apple|001234.abcdef0123456789abcdef0123456789.1234",
    "00uid4BxXw6I6TV4m0g3",
    "103547991597142817347",
    "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
    "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
]
# Shell, path and URL syntax, whitespace, control characters and non-ASCII stay out of usernames: they
# are printed in commands for a terminal, and compared as they are.
NOT_USERNAMES = [
    "",
    "a b",
    "a\tb",
    "alice/bob",
    "alice\n",
    "a\x00b",
    "a\x1bb",
    "élodie",
    "A" * 129,
    "carol;drop",
    "a'b",
    'a"b',
    "a$b",
    "a`b",
    "a&b",
    "a<b",
    "a>b",
    "a(b)",
    "a\\b",
    "a*b",
    "repo:octo-org/octo-repo:ref:refs/heads/main",
    "a:b",
    "a%7Cb",
    None,
]


@pytest.mark.parametrize("name", MCP_STYLE_USERNAMES)
def test_local_identity_accepts_mcp_style_usernames(name: str) -> None:
    assert LocalIdentity(name).username(_context()) == name


@pytest.mark.parametrize("name", PROVIDER_SUBJECTS)
def test_local_identity_accepts_the_subjects_of_common_oidc_providers(name: str) -> None:
    assert LocalIdentity(name).username(_context()) == name


@given(st.from_regex(r"[A-Za-z0-9_.@|\-]{1,128}", fullmatch=True))
def test_local_identity_accepts_any_name_of_the_username_alphabet(name: str) -> None:
    assert LocalIdentity(name).username(_context()) == name


@pytest.mark.parametrize("name", NOT_USERNAMES, ids=repr)
def test_local_identity_refuses_names_outside_the_username_rule(name: Any) -> None:
    with pytest.raises(InvalidInputError, match="username"):
        LocalIdentity(name)


def test_local_username_prefers_the_configured_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "John Doe")

    assert local_username("alice") == "alice"


@pytest.mark.parametrize("configured", [None, ""])
def test_local_username_falls_back_to_the_login_name(
    monkeypatch: pytest.MonkeyPatch, configured: str | None
) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "carol")

    assert local_username(configured) == "carol"


def test_a_login_name_that_is_not_a_username_asks_for_mcp_secrets_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "John Doe")

    with pytest.raises(InvalidInputError, match="MCP_SECRETS_USER") as raised:
        local_username(None)

    assert "John Doe" not in str(raised.value)


@pytest.mark.parametrize("failure", [KeyError("getpwuid(): uid not found: 12345"), OSError("no login name")])
def test_a_process_without_a_login_name_asks_for_mcp_secrets_user(
    monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """A container run as a uid with no passwd entry, and no USER in its environment (docker run --user)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(_uid: int) -> Any:
        raise failure

    monkeypatch.setattr(pwd, "getpwuid", no_entry)

    with pytest.raises(InvalidInputError, match="MCP_SECRETS_USER"):
        local_username(None)


def test_a_configured_name_that_is_not_a_username_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="MCP_SECRETS_USER"):
        local_username("a b")


# --- API tokens -----------------------------------------------------------------------------------


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def api_tokens(tmp_path: Path, clock: _Clock) -> Iterator[ApiTokens]:
    store = SQLiteStore(tmp_path / "secrets.db")
    yield ApiTokens(store, clock=clock)
    store.close()


@pytest.fixture
def alices_token(api_tokens: ApiTokens) -> NewToken:
    return api_tokens.create("alice", label="laptop", expires_in=timedelta(hours=1))


@pytest.mark.anyio
async def test_a_live_api_token_verifies_as_its_user(api_tokens: ApiTokens, alices_token: NewToken) -> None:
    access = await ApiTokenVerifier(api_tokens).verify_token(alices_token.token)

    assert access is not None
    assert access.subject == "alice"
    assert access.client_id == f"api-token:{alices_token.record.token_id}"
    assert access.expires_at == int((T0 + timedelta(hours=1)).timestamp())
    assert access.token == alices_token.token


def _revoked(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    tokens.revoke(new.record.token_id)
    return new.token


def _expired(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    clock.now = T0 + timedelta(hours=1)
    return new.token


def _unknown(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    return f"mcps_{new.record.token_id}_{'A' * 43}"


def _tampered(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    return new.token[:-1] + ("A" if new.token[-1] != "A" else "B")


def _store_unavailable(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    tokens.store.close()
    return new.token


def _record_unreadable(tokens: ApiTokens, clock: _Clock, new: NewToken) -> str:
    # Another tool left its record of the wrong shape: asking again will not help (503 says it would),
    # and the token is refused until someone corrects or removes the record.
    alter_stored(tokens.store, "api_tokens", {"token_id": new.record.token_id}, "created_at", "not a time")
    return new.token


@pytest.mark.anyio
@pytest.mark.parametrize(
    "spoil", [_revoked, _expired, _unknown, _tampered, _store_unavailable, _record_unreadable]
)
async def test_an_api_token_that_is_not_live_is_refused(
    api_tokens: ApiTokens,
    clock: _Clock,
    alices_token: NewToken,
    spoil: Callable[[ApiTokens, _Clock, NewToken], str],
) -> None:
    token = spoil(api_tokens, clock, alices_token)

    with _checking() as outage:
        assert await ApiTokenVerifier(api_tokens).verify_token(token) is None

    # Only a token the store could not be asked about is left unjudged (the HTTP layer answers 503).
    assert (outage.reason == "the secret store is unavailable") is (spoil is _store_unavailable)


@contextmanager
def _checking() -> Iterator[TokenCheckOutage]:
    """As the HTTP layer checks a request's token: with a mark for a check that could not be made."""
    outage = TokenCheckOutage()
    reset = TOKEN_CHECK_OUTAGE.set(outage)
    try:
        yield outage
    finally:
        TOKEN_CHECK_OUTAGE.reset(reset)


# --- JWTs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS holding the public half of ``signing_key``, served on a local port."""
    with serving_jwks(signing_key.public_key(), KID) as url:
        yield url


def _claims(**changes: Any) -> dict[str, Any]:
    """Good claims for alice, with some changed; a change to None removes the claim."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300} | changes
    return {name: value for name, value in claims.items() if value is not None}


def _sign(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = KID) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(alg: str, claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS built by hand, as an attacker would, for algorithms PyJWT refuses to produce."""
    header = {"alg": alg, "typ": "JWT", "kid": KID}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _hs256_with_the_public_key(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return lambda data: hmac.new(public_pem, data, hashlib.sha256).digest()


@pytest.mark.anyio
async def test_a_valid_jwt_verifies_as_its_sub(jwks_url: str, signing_key: rsa.RSAPrivateKey) -> None:
    claims = _claims(azp="claude-desktop", scope="secrets:read secrets:write")
    token = _sign(signing_key, claims)

    access = await JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE).verify_token(token)

    assert access is not None
    assert access.subject == "alice"
    assert access.client_id == "claude-desktop"
    assert access.scopes == ["secrets:read", "secrets:write"]
    assert access.expires_at == claims["exp"]
    assert access.resource == AUDIENCE


@pytest.mark.anyio
async def test_a_jwt_issued_by_a_clock_a_few_seconds_ahead_verifies(
    jwks_url: str, signing_key: rsa.RSAPrivateKey
) -> None:
    ahead = int(time.time()) + 5
    token = _sign(signing_key, _claims(iat=ahead, nbf=ahead))

    access = await JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE).verify_token(token)

    assert access is not None
    assert access.subject == "alice"


@pytest.mark.anyio
@pytest.mark.parametrize("sub", PROVIDER_SUBJECTS)
async def test_a_jwt_whose_sub_is_a_common_providers_subject_names_that_user(
    jwks_url: str, signing_key: rsa.RSAPrivateKey, sub: str
) -> None:
    token = _sign(signing_key, _claims(sub=sub))

    access = await JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE).verify_token(token)

    assert access is not None
    assert access.subject == sub


@pytest.mark.anyio
async def test_a_configured_username_claim_names_the_user(
    jwks_url: str, signing_key: rsa.RSAPrivateKey
) -> None:
    token = _sign(signing_key, _claims(sub="00u1f2e3d4", email="carol@example.com"))
    verifier = JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE, username_claim="email")

    access = await verifier.verify_token(token)

    assert access is not None
    assert access.subject == "carol@example.com"


@pytest.mark.anyio
async def test_a_signing_key_the_provider_withdraws_is_refused_once_its_key_set_is_fetched_again(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    keys = {"k1": signing_key.public_key(), "k2": other_key.public_key()}
    with jwks_provider(keys) as (url, publish):
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE, keys_lifespan=0.5)
        assert await verifier.verify_token(_sign(signing_key, _claims(), kid="k1")) is not None

        publish({"k2": other_key.public_key()})  # k1 leaked: the provider withdraws it
        await anyio.sleep(0.6)  # the key set this verifier fetched is now older than its lifespan

        assert await verifier.verify_token(_sign(signing_key, _claims(sub="mallory"), kid="k1")) is None
        assert await verifier.verify_token(_sign(other_key, _claims(), kid="k2")) is not None
        assert await verifier.verify_token(_sign(signing_key, _claims(sub="mallory"), kid="k1")) is None


@pytest.mark.anyio
async def test_tokens_with_unknown_key_ids_do_not_each_fetch_the_key_set(
    signing_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anyone can send a JWT naming a key id the provider never had: were each one to fetch the key set
    # again, the server would fetch the provider's for every such request, as often as sent.
    fetches = _counting_fetches(monkeypatch)
    with jwks_provider({KID: signing_key.public_key()}) as (url, _):
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)
        assert await verifier.verify_token(_sign(signing_key, _claims())) is not None
        for _ in range(20):
            forged = _sign(signing_key, _claims(), kid=secrets.token_hex(8))
            assert await verifier.verify_token(forged) is None

    assert len(fetches) <= 2  # the first, and at most one more to look for a key the provider just added


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Moves on the monotonic clock the JWT checks read, ours and that of PyJWT's key set client and cache."""
    offset = [0.0]
    clock = SimpleNamespace(monotonic=lambda: time.monotonic() + offset[0], time=time.time)
    for module in (identity, jwt.jwks_client, jwt.jwk_set_cache, jwt.api_jwk):
        monkeypatch.setattr(module, "time", clock)

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


@pytest.mark.anyio
async def test_a_token_of_a_key_the_provider_has_just_added_verifies_at_once(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    # oidc-provider (restarted with a new key first) and Keycloak (a new key of higher priority) sign
    # with a key as soon as they publish it: the key set fetched a moment ago lacks it.
    with jwks_provider({"k1": signing_key.public_key()}) as (url, publish):
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)
        assert await verifier.verify_token(_sign(signing_key, _claims(), kid="k1")) is not None

        publish({"k2": other_key.public_key(), "k1": signing_key.public_key()})
        access = await verifier.verify_token(_sign(other_key, _claims(), kid="k2"))

    assert access is not None
    assert access.subject == "alice"


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"keys": []}', b'{"error": "rate limited"}'])
async def test_tokens_with_unknown_key_ids_do_not_each_fetch_a_key_set_answered_with_json_that_is_none(
    signing_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    later: Callable[[float], None],
    body: bytes,
) -> None:
    # A failed fetch for an unknown key id started no wait before the next: while the provider answered
    # so, each token naming a key id it never had fetched its key set again, as often as anyone sent one.
    fetches = _counting_fetches(monkeypatch)
    with jwks_provider({KID: signing_key.public_key()}) as (url, publish):
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)
        assert await verifier.verify_token(_sign(signing_key, _claims())) is not None
        later(60)  # the key set was fetched a minute ago: good for four more
        publish(body)
        for _ in range(20):
            forged = _sign(signing_key, _claims(), kid=secrets.token_hex(8))
            with _checking():
                assert await verifier.verify_token(forged) is None

    assert len(fetches) <= 2


@pytest.mark.anyio
@pytest.mark.parametrize("down", [b"<html>Down for maintenance</html>", b"[]", "connection refused"])
async def test_a_token_with_an_unknown_key_id_while_the_provider_is_down_leaves_others_verifying(
    signing_key: rsa.RSAPrivateKey, later: Callable[[float], None], down: bytes | str
) -> None:
    # The key set fetched a minute ago is good for its lifespan. A failed fetch for one token's unknown
    # key id left every JWT unjudged (503) for the retry time: anyone could keep them so all along.
    with ExitStack() as provider:
        url, publish = provider.enter_context(jwks_provider({KID: signing_key.public_key()}))
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)
        assert await verifier.verify_token(_sign(signing_key, _claims())) is not None
        later(60)  # the key set was fetched a minute ago: good for four more
        if isinstance(down, bytes):
            publish(down)
        else:
            provider.close()  # its server stops: connections are refused
        with _checking() as unknown:
            assert await verifier.verify_token(_sign(signing_key, _claims(), kid="key-2026")) is None
        with _checking() as known:
            access = await verifier.verify_token(_sign(signing_key, _claims()))

    assert access is not None
    assert known.reason is None
    assert unknown.reason == "the identity provider's key set cannot be fetched"  # 503: perhaps its new key


REFUSED_JWTS: dict[str, Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], str]] = {
    "wrong audience": lambda key, _: _sign(key, _claims(aud="https://other.example.com/")),
    "no audience": lambda key, _: _sign(key, _claims(aud=None)),
    "wrong issuer": lambda key, _: _sign(key, _claims(iss="https://evil.example.com/")),
    "no issuer": lambda key, _: _sign(key, _claims(iss=None)),
    "expired": lambda key, _: _sign(key, _claims(exp=int(time.time()) - 60)),
    "expired a second ago": lambda key, _: _sign(key, _claims(exp=int(time.time()) - 1)),
    "valid only in an hour": lambda key, _: _sign(key, _claims(nbf=int(time.time()) + 3600)),
    "issued in an hour": lambda key, _: _sign(key, _claims(iat=int(time.time()) + 3600)),
    "no expiry": lambda key, _: _sign(key, _claims(exp=None)),
    "signed by another key with the same kid": lambda _, other: _sign(other, _claims()),
    "unknown kid": lambda key, _: _sign(key, _claims(), kid="someone-elses-key"),
    "alg none": lambda _key, _: _forged("none", _claims(), lambda _: b""),
    "HS256 keyed with the public key": lambda key, _: _forged(
        "HS256", _claims(), _hs256_with_the_public_key(key)
    ),
    "not a JWT": lambda _key, _: "not.a.jwt",
}


@pytest.mark.anyio
@pytest.mark.parametrize("make_token", REFUSED_JWTS.values(), ids=REFUSED_JWTS.keys())
async def test_a_jwt_that_does_not_verify_is_refused(
    jwks_url: str,
    signing_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    make_token: Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], str],
) -> None:
    token = make_token(signing_key, other_key)

    assert await JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE).verify_token(token) is None


NOT_USERNAME_CLAIMS = {
    "space": "a b",
    "list": ["alice"],
    "number": 42,
    "missing": None,
    "empty": "",
    "too long": "A" * 129,
    "path": "alice/../bob",
    "pipe-and-semicolon": "auth0|x;rm",
    "quote": "auth0|x'y",
    "dollar": "auth0|$HOME",
    "newline": "auth0|x\ny",
    "non-ascii": "auth0|élodie",
}


@pytest.mark.anyio
@pytest.mark.parametrize("claim", ["sub", "email"])
@pytest.mark.parametrize("value", NOT_USERNAME_CLAIMS.values(), ids=NOT_USERNAME_CLAIMS.keys())
async def test_a_jwt_whose_username_claim_is_not_a_username_is_refused(
    jwks_url: str, signing_key: rsa.RSAPrivateKey, claim: str, value: object
) -> None:
    token = _sign(signing_key, _claims(**{claim: value}))
    verifier = JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE, username_claim=claim)

    assert await verifier.verify_token(token) is None


@pytest.mark.anyio
async def test_a_jwt_is_refused_when_the_jwks_cannot_be_fetched(signing_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    verifier = JwtVerifier(f"http://127.0.0.1:{closed_port}/jwks.json", issuer=ISSUER, audience=AUDIENCE)

    with _checking() as outage:
        assert await verifier.verify_token(_sign(signing_key, _claims())) is None

    # Not judged: the HTTP layer answers 503 (try again), not 401 (this token is no good).
    assert outage.reason == "the identity provider's key set cannot be fetched"


def _counting_fetches(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Each fetch of a key set by any ``PyJWKClient`` appends to the list returned."""
    fetches: list[None] = []
    fetch = jwt.PyJWKClient.fetch_data

    def counted(client: jwt.PyJWKClient) -> Any:
        fetches.append(None)
        return fetch(client)

    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", counted)
    return fetches


@pytest.mark.anyio
async def test_while_the_jwks_cannot_be_fetched_requests_do_not_each_fetch_it_or_log(
    signing_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone can send a bearer string: while the provider is down, each one fetched its key set again
    # and logged a warning, as often as sent. Text that is no JWT at all needs no key set to refuse.
    fetches = _counting_fetches(monkeypatch)
    with jwks_provider({KID: signing_key.public_key()}) as (url, publish):
        publish(b"<html>Down for maintenance</html>")
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)
        outages = []
        with caplog.at_level("WARNING"):
            for _ in range(20):
                with _checking() as outage:
                    assert await verifier.verify_token(_sign(signing_key, _claims())) is None
                outages.append(outage.reason)
            with _checking() as not_a_jwt:
                assert await verifier.verify_token("x") is None

    assert len(fetches) == 1
    assert outages == ["the identity provider's key set cannot be fetched"] * 20  # 503, try again
    assert caplog.text.count("the JWKS could not be fetched") == 1
    assert not_a_jwt.reason is None  # judged: 401


@pytest.mark.anyio
async def test_the_jwks_is_fetched_again_once_the_retry_time_has_passed(
    signing_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches = _counting_fetches(monkeypatch)
    with jwks_provider({KID: signing_key.public_key()}) as (url, publish):
        publish(b"<html>Down for maintenance</html>")
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE, fetch_retry=0.2)
        with _checking():
            assert await verifier.verify_token(_sign(signing_key, _claims())) is None
        publish({KID: signing_key.public_key()})  # back
        await anyio.sleep(0.3)
        access = await verifier.verify_token(_sign(signing_key, _claims()))

    assert access is not None
    assert len(fetches) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"<html>Down for maintenance</html>", b'{"keys": [', b"\xff\xfe"])
async def test_a_jwt_is_left_unjudged_when_the_jwks_answers_with_something_not_json(
    signing_key: rsa.RSAPrivateKey, body: bytes
) -> None:
    # A maintenance page answered with 200, or a body cut short: the key set could not be read.
    with jwks_provider({KID: signing_key.public_key()}) as (url, publish):
        publish(body)
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)

        with _checking() as outage:
            assert await verifier.verify_token(_sign(signing_key, _claims())) is None

    assert outage.reason == "the identity provider's key set cannot be fetched"


@contextmanager
def _unfetchable_jwks(problem: str, key: rsa.RSAPublicKey) -> Iterator[str]:
    """The URL of a key set that cannot be fetched for ``problem``."""
    if problem == "connection refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        yield f"http://127.0.0.1:{closed_port}/jwks.json"
    elif problem == "timed out":
        with socket.socket() as hanging:
            hanging.bind(("127.0.0.1", 0))
            hanging.listen(1)  # the connection is taken into the backlog and never answered
            yield f"http://127.0.0.1:{hanging.getsockname()[1]}/jwks.json"
    else:
        with jwks_provider({KID: key}) as (url, publish):
            publish(b"<html>Down for maintenance</html>")
            yield url.replace("jwks.json", "keys.json") if problem == "HTTP 404" else url


@pytest.mark.anyio
@pytest.mark.parametrize("problem", ["HTTP 404", "timed out", "connection refused", "not JSON"])
async def test_a_jwks_that_cannot_be_fetched_is_logged_saying_why_without_the_token_or_the_query(
    signing_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    # A URL's query may carry a credential of the provider's (an API key): it is never logged.
    canary = secrets.token_urlsafe(16)
    token = _sign(signing_key, _claims())
    with _unfetchable_jwks(problem, signing_key.public_key()) as url:
        verifier = JwtVerifier(f"{url}?key={canary}", issuer=ISSUER, audience=AUDIENCE, fetch_timeout=0.5)
        with caplog.at_level("INFO"), _checking():
            assert await verifier.verify_token(token) is None

    logged = caplog.text
    assert problem.lower() in logged.lower()
    assert url.split("?")[0] in logged  # the origin and path say which provider
    assert canary not in logged
    assert token not in logged
    assert token.split(".")[1] not in logged


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [b"[]", b"null", b'{"keys": []}', b'{"error": "rate limited"}'],
    ids=["list", "null", "no-keys", "error"],
)
async def test_a_jwt_is_left_unjudged_when_the_jwks_answers_with_json_that_is_no_key_set(
    signing_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    # A provider's proxy answering 200 with its own JSON, or a key set emptied by mistake: every token
    # would be refused as bad (401), the log saying so at INFO, as if each were at fault.
    with jwks_provider({KID: signing_key.public_key()}) as (url, publish):
        publish(body)
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)

        with caplog.at_level("INFO"), _checking() as outage:
            assert await verifier.verify_token(_sign(signing_key, _claims())) is None

    assert outage.reason == "the identity provider's key set cannot be fetched"
    assert "not a key set" in caplog.text


@pytest.mark.anyio
async def test_a_jwt_refused_on_its_merits_is_judged(jwks_url: str, other_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(jwks_url, issuer=ISSUER, audience=AUDIENCE)

    with _checking() as outage:
        assert await verifier.verify_token(_sign(other_key, _claims())) is None

    assert outage.reason is None


@pytest.mark.anyio
async def test_jwts_checked_while_the_jwks_hangs_hold_a_few_worker_threads_not_the_servers_all(
    signing_key: rsa.RSAPrivateKey,
) -> None:
    # Requests carrying any JWT-shaped text each wait on the provider: left to the shared worker
    # threads, they would hold every one, and the store calls of every other request would wait too.
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(64)  # connections are taken into the backlog and never answered
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/jwks.json"
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE, fetch_timeout=0.5)
        shared = anyio.to_thread.current_default_thread_limiter()
        token = _sign(signing_key, _claims())

        async with anyio.create_task_group() as checks:
            for _ in range(3 * JWT_CHECK_THREADS):  # more than its own threads, fewer than the shared
                checks.start_soon(verifier.verify_token, token)
            await anyio.wait_all_tasks_blocked()
            held = shared.borrowed_tokens
            assert await anyio.to_thread.run_sync(lambda: "a store call") == "a store call"
            checks.cancel_scope.cancel()

    assert held == 0  # each check waits on the verifier's own few threads


# --- routing and the bearer identity --------------------------------------------------------------


class _NamedVerifier:
    """Answers every token with an access token naming this verifier, and remembers what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    async def verify_token(self, token: str) -> AccessToken | None:
        self.seen.append(token)
        return AccessToken(token=token, client_id=self.name, scopes=[])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "route"),
    [
        ("mcps_0a1b2c3d4e_secretpart", "api"),
        ("mcps_", "api"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln", "jwt"),
        ("MCPS_0a1b2c3d4e_secretpart", "jwt"),
        ("mcp_0a1b2c3d4e_secretpart", "jwt"),
    ],
)
async def test_either_verifier_routes_api_tokens_by_their_prefix(token: str, route: str) -> None:
    api, jwts = _NamedVerifier("api"), _NamedVerifier("jwt")

    access = await EitherVerifier(api, jwts).verify_token(token)

    assert access is not None
    assert access.client_id == route
    assert (api.seen, jwts.seen) == (([token], []) if route == "api" else ([], [token]))


def _access_token(subject: str | None) -> AccessToken:
    return AccessToken(token="opaque", client_id="client", scopes=[], subject=subject)


def test_bearer_identity_without_a_token_is_unauthorised() -> None:
    with pytest.raises(UnauthorisedError):
        BearerIdentity().username(_context(request=None))


def test_bearer_identity_of_an_unauthenticated_request_is_unauthorised() -> None:
    request = SimpleNamespace(scope={"type": "http", "headers": []})

    with pytest.raises(UnauthorisedError):
        BearerIdentity().username(_context(request))


def test_bearer_identity_is_the_subject_of_the_requests_verified_token() -> None:
    request = SimpleNamespace(scope={"user": AuthenticatedUser(_access_token("alice"))})

    assert BearerIdentity().username(_context(request)) == "alice"


def test_bearer_identity_falls_back_to_the_auth_context() -> None:
    reset = auth_context_var.set(AuthenticatedUser(_access_token("bob")))
    try:
        assert BearerIdentity().username(_context(request=None)) == "bob"
    finally:
        auth_context_var.reset(reset)


def test_bearer_identity_of_a_token_without_a_subject_is_unauthorised() -> None:
    request = SimpleNamespace(scope={"user": AuthenticatedUser(_access_token(None))})

    with pytest.raises(UnauthorisedError):
        BearerIdentity().username(_context(request))


@pytest.mark.anyio
async def test_a_key_set_whose_keys_have_no_kid_is_said_to_hold_no_signing_key(
    signing_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    # PyJWT's key set client uses only keys with a kid, as every major provider publishes them: a key set of
    # keys without one is the provider's fault to fix (503, try again), and the warning says which.
    unnamed = {**RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True), "use": "sig", "alg": "RS256"}
    with jwks_provider({}) as (url, publish):
        publish(json.dumps({"keys": [unnamed]}).encode())
        verifier = JwtVerifier(url, issuer=ISSUER, audience=AUDIENCE)

        with _checking() as outage:
            access = await verifier.verify_token(jwt.encode(_claims(), signing_key, algorithm="RS256"))

    assert access is None
    assert outage.reason == "the identity provider's key set cannot be fetched"
    assert "the answer is not a key set with signing keys" in caplog.text
