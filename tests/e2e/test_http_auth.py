"""Bearer auth on real HTTP servers: who gets in, who gets 401, and the Host/Origin guard.

Every check runs on Streamable HTTP and SSE, and on a server taking API tokens
only as well as one that also takes JWTs of a (local) OIDC provider's JWKS. All
servers share one store, so one set of CLI-made tokens serves them all.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets as _random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import assert_no_fragment_of, new_canary, serving_jwks
from mcp_secrets.web import INVALID_MESSAGE

from .conftest import HTTP_TRANSPORTS, INITIALIZE, Deployment, create_token, isolated_env, run_cli, serving

pytestmark = pytest.mark.anyio

ISSUER = "https://id.example.com/"
AUDIENCE = "https://secrets.example.com/mcp"
KID = "key-2025"
EXPIRES_DAYS = 0.00001  # 0.864 s
JSON_POST = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODES = ["api-tokens", "api-tokens-and-jwts"]


# --- a local OIDC provider's JWKS (as in tests/test_identity.py) ----------------------------------


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS holding the public half of ``signing_key``, served on a local port."""
    with serving_jwks(signing_key.public_key(), KID) as url:
        yield url


def signed_jwt(key: rsa.RSAPrivateKey, typ: str | None = "JWT", **changes: Any) -> str:
    """A JWT for carol from the provider, typed ``typ`` (None: no typ), with some claims changed."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "iat": now, "exp": now + 300} | changes
    headers = {"kid": KID} if typ is None else {"kid": KID, "typ": typ}
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


# --- one store, four servers --------------------------------------------------------------------------


@dataclass
class Tokens:
    """API tokens of alice made by the CLI: one live, one expiring at once, one revoked."""

    live: str
    expiring: str
    expired_after: float  # time.monotonic() by which ``expiring`` has certainly expired
    revoked: str

    def wait_until_expired(self) -> None:
        time.sleep(max(0.0, self.expired_after - time.monotonic()))


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return isolated_env(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def tokens(store_env: dict[str, str]) -> Tokens:
    live = create_token(store_env, "alice")
    made = run_cli(store_env, "token", "create", "alice", "--expires-days", str(EXPIRES_DAYS))
    assert made.returncode == 0, made.stderr
    # The token was made before the command returned, so it expires at most this long after now.
    expired_after = time.monotonic() + EXPIRES_DAYS * 86400 + 0.1
    assert made.stdout.startswith("mcps_"), made.stdout  # a well-formed token, refused only once expired
    revoked = create_token(store_env, "alice")
    revoking = run_cli(store_env, "token", "revoke", revoked.split("_")[1])
    assert revoking.returncode == 0, revoking.stderr
    return Tokens(live, made.stdout.strip(), expired_after, revoked)


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, store_env: dict[str, str], tokens: Tokens, jwks_url: str
) -> Iterator[Callable[[str, str], Deployment]]:
    """``server(mode, transport)``: started on first use, shared by the module, all on one store."""
    started: dict[tuple[str, str], Deployment] = {}
    jwt_settings = {
        "MCP_SECRETS_JWKS_URL": jwks_url,
        "MCP_SECRETS_ISSUER": ISSUER,
        "MCP_SECRETS_AUDIENCE": AUDIENCE,
    }
    with ExitStack() as running:

        def server(mode: str, transport: str) -> Deployment:
            if (mode, transport) not in started:
                env = {**store_env, **(jwt_settings if mode == "api-tokens-and-jwts" else {})}
                log = tmp_path_factory.mktemp(f"{mode}-{transport}") / "server.log"
                started[mode, transport] = running.enter_context(serving(env, transport, log))
                started[mode, transport].tokens["alice"] = tokens.live
            return started[mode, transport]

        yield server


@pytest.fixture(params=[(mode, transport) for mode in MODES for transport in HTTP_TRANSPORTS], ids="-".join)
def auth_deployment(request: pytest.FixtureRequest, servers: Callable[[str, str], Deployment]) -> Deployment:
    """Each auth mode on each HTTP transport in turn."""
    return servers(*request.param)


@pytest.fixture(params=HTTP_TRANSPORTS)
def jwt_deployment(request: pytest.FixtureRequest, servers: Callable[[str, str], Deployment]) -> Deployment:
    """A server that also takes JWTs, on each HTTP transport in turn."""
    return servers("api-tokens-and-jwts", request.param)


@dataclass
class Answer:
    status: int
    www_authenticate: str


def probe(deployment: Deployment, headers: dict[str, str], query: str = "") -> Answer:
    """Open the MCP endpoint as a client would, headers sent byte for byte; the answer, body unread.

    ``http.client`` rather than httpx: it sends a header value such as "Bearer " as it is.
    """
    endpoint = urlsplit(deployment.endpoint)
    path = f"{endpoint.path}?{query}" if query else endpoint.path
    connection = http.client.HTTPConnection(endpoint.hostname or "", endpoint.port, timeout=10)
    try:
        if deployment.transport == "sse":
            connection.request("GET", path, headers=headers)
        else:
            body = json.dumps(INITIALIZE)
            connection.request("POST", path, body, {**JSON_POST, **headers})
        response = connection.getresponse()
        return Answer(response.status, response.headers.get("WWW-Authenticate", ""))
    finally:
        connection.close()


async def username_seen_with(deployment: Deployment, token: str) -> str:
    async with deployment.connect(token=token) as client:
        listed = await client.call_tool("list_secret_keys", {})
    assert not listed.is_error, listed.content
    assert listed.structured_content is not None
    return str(listed.structured_content["username"])


# --- API tokens and malformed headers -------------------------------------------------------------------


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


REFUSED_AUTHORIZATION: dict[str, Callable[[Tokens], str | None]] = {
    "no-header": lambda _: None,
    "basic-user-and-password": lambda _: _basic("alice:hunter2"),
    "basic-carrying-a-live-token": lambda tokens: _basic(tokens.live),
    "bearer-without-a-token": lambda _: "Bearer",
    "bearer-with-an-empty-token": lambda _: "Bearer ",
    "bearer-garbage": lambda _: "Bearer garbage",
    "bearer-unknown-api-token": lambda _: "Bearer mcps_0123456789_" + "A" * 43,
    "bearer-live-token-with-one-character-changed": lambda tokens: "Bearer " + tokens.live[:-1] + "?",
    "bearer-expired-token": lambda tokens: f"Bearer {tokens.expiring}",
    "bearer-revoked-token": lambda tokens: f"Bearer {tokens.revoked}",
}


@pytest.mark.parametrize("authorization", REFUSED_AUTHORIZATION.values(), ids=REFUSED_AUTHORIZATION.keys())
def test_a_request_without_a_live_bearer_token_gets_401_with_www_authenticate(
    auth_deployment: Deployment, tokens: Tokens, authorization: Callable[[Tokens], str | None]
) -> None:
    header = authorization(tokens)
    tokens.wait_until_expired()

    response = probe(auth_deployment, {} if header is None else {"Authorization": header})

    assert response.status == 401
    assert response.www_authenticate.startswith("Bearer")
    assert tokens.live not in response.www_authenticate


@pytest.mark.parametrize("second", ["live", "garbage"])
def test_a_request_with_two_authorization_headers_is_refused_rather_than_one_taken(
    auth_deployment: Deployment, tokens: Tokens, second: str
) -> None:
    # A proxy that checks the other header than the SDK reads would let in, or log, another user.
    headers = [("Authorization", f"Bearer {tokens.live}")]
    headers.append(("Authorization", f"Bearer {tokens.live if second == 'live' else 'garbage'}"))
    headers.append(("Accept", "application/json, text/event-stream"))
    with httpx2.Client(trust_env=False, timeout=10) as http:
        if auth_deployment.transport == "sse":
            with http.stream("GET", auth_deployment.endpoint, headers=headers) as answer:
                status, challenge = answer.status_code, answer.headers.get("WWW-Authenticate", "")
        else:
            answer = http.post(auth_deployment.endpoint, headers=headers, json=INITIALIZE)
            status, challenge = answer.status_code, answer.headers.get("WWW-Authenticate", "")

    assert status == 400
    assert challenge.startswith('Bearer error="invalid_request"')
    assert tokens.live not in challenge


async def test_a_live_api_token_gets_in_as_its_user(auth_deployment: Deployment, tokens: Tokens) -> None:
    assert await username_seen_with(auth_deployment, tokens.live) == "alice"


@pytest.mark.parametrize("parameter", ["access_token", "token"])
def test_an_api_token_in_the_url_is_refused_and_the_log_shows_only_its_id(
    auth_deployment: Deployment, parameter: str
) -> None:
    token = create_token(auth_deployment.env, "alice")  # live, and sent nowhere else

    response = probe(auth_deployment, {}, query=f"{parameter}={token}")

    # Refused, as a token belongs in the Authorization header; but the access log quotes the URL.
    assert response.status == 401
    token_id, random_part = token.removeprefix("mcps_").split("_", 1)
    log = auth_deployment.log()
    id_shown = f"{parameter}=mcps_{token_id}_…" in log  # a bare bool: a failure prints no log line
    assert id_shown
    assert_no_fragment_of(random_part, log)


def percent_encoded(text: str, characters: str) -> str:
    """``text`` with each of ``characters`` sent as its %XX escape, as a URL may legally carry it."""
    return "".join(f"%{ord(c):02X}" if c in characters else c for c in text)


def test_an_api_token_in_the_url_with_escaped_characters_is_kept_out_of_the_log(
    auth_deployment: Deployment,
) -> None:
    token = create_token(auth_deployment.env, "alice")  # live, and sent nowhere else

    response = probe(auth_deployment, {}, query=f"access_token={percent_encoded(token, '_-')}")

    assert response.status == 401
    random_part = token.removeprefix("mcps_").split("_", 1)[1]
    log = auth_deployment.log()
    assert_no_fragment_of(random_part, log)
    assert_no_fragment_of(percent_encoded(random_part, "_-"), log)


# --- JWTs of the OIDC provider ------------------------------------------------------------------------


async def test_a_valid_jwt_gets_in_as_its_sub(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey
) -> None:
    assert await username_seen_with(jwt_deployment, signed_jwt(signing_key)) == "carol"


async def test_a_jwt_from_a_provider_whose_clock_runs_a_few_seconds_ahead_gets_in(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey
) -> None:
    ahead = int(time.time()) + 5  # issued, and valid from, a few seconds ahead of this machine's clock
    token = signed_jwt(signing_key, iat=ahead, nbf=ahead)

    assert await username_seen_with(jwt_deployment, token) == "carol"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", "AT+JWT", None])
async def test_a_jwt_typed_as_an_access_token_or_untyped_gets_in(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey, typ: str | None
) -> None:
    assert await username_seen_with(jwt_deployment, signed_jwt(signing_key, typ=typ)) == "carol"


@pytest.mark.parametrize("typ", ["logout+jwt", "dpop+jwt", "application/secevent+jwt", "id_token+jwt"])
def test_a_jwt_typed_as_another_kind_of_token_gets_401(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey, typ: str
) -> None:
    # Signed by the provider, for this audience and issuer, and live: only its type is wrong.
    response = probe(jwt_deployment, {"Authorization": f"Bearer {signed_jwt(signing_key, typ=typ)}"})

    assert response.status == 401


REFUSED_JWTS: dict[str, dict[str, Any]] = {
    "wrong-audience": {"aud": "https://elsewhere.example.com/mcp"},
    "wrong-issuer": {"iss": "https://evil.example.com/"},
    "expired": {"exp": int(time.time()) - 3600},
    "expired-seconds-ago": {"exp": int(time.time()) - 2},
    "valid-only-in-an-hour": {"iat": int(time.time()) + 3600, "nbf": int(time.time()) + 3600},
}


@pytest.mark.parametrize("claims", REFUSED_JWTS.values(), ids=REFUSED_JWTS.keys())
def test_a_jwt_with_a_wrong_audience_issuer_or_validity_gets_401(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey, claims: dict[str, Any]
) -> None:
    response = probe(jwt_deployment, {"Authorization": f"Bearer {signed_jwt(signing_key, **claims)}"})

    assert response.status == 401
    assert response.www_authenticate.startswith("Bearer")


@pytest.mark.parametrize("escaped", ["", "."], ids=["plain", "dots-escaped"])
def test_a_jwt_in_the_url_is_refused_and_kept_out_of_the_log(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey, escaped: str
) -> None:
    token = signed_jwt(signing_key, jti=new_canary())  # valid, and unlike any other JWT sent

    response = probe(jwt_deployment, {}, query=f"access_token={percent_encoded(token, escaped)}")

    assert response.status == 401
    claims_and_signature = token.split(".", 1)[1]
    log = jwt_deployment.log()
    assert_no_fragment_of(claims_and_signature, log)
    assert_no_fragment_of(percent_encoded(claims_and_signature, escaped), log)


def test_a_jwt_signed_by_a_key_outside_the_jwks_gets_401(jwt_deployment: Deployment) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    response = probe(jwt_deployment, {"Authorization": f"Bearer {signed_jwt(stranger)}"})

    assert response.status == 401


# Subjects as Auth0 makes them: the connection's strategy (and, for an enterprise one, its name), a bar,
# then the user's id at that connection. {} is a fresh id, as the servers share one store.
AUTH0_SUBJECTS = {
    "database": "auth0|{}",
    "social": "google-oauth2|{}",
    "enterprise": "samlp|Customer1|{}@example.com",
}


@pytest.mark.parametrize("pattern", AUTH0_SUBJECTS.values(), ids=AUTH0_SUBJECTS.keys())
async def test_a_jwt_with_an_auth0_subject_acts_for_that_user_everywhere(
    jwt_deployment: Deployment, signing_key: rsa.RSAPrivateKey, pattern: str
) -> None:
    username = pattern.format(_random.token_hex(12))
    token = signed_jwt(signing_key, sub=username)
    canary = new_canary()

    async with jwt_deployment.connect(token=token) as client:
        stored = await client.call_tool("set_secret", {"server": "github", "key": "TOKEN", "value": canary})
        listed = await client.call_tool("list_secret_keys", {})
        events = await client.call_tool("list_secret_events", {})
    with httpx2.Client(base_url=jwt_deployment.base_url or "", timeout=10) as http:
        rest = http.get("/secrets", headers={"Authorization": f"Bearer {token}"})
    audit = jwt_deployment.cli("audit", "--user", username, "--json")
    cli_list = jwt_deployment.cli("list", "--user", username, "--json")

    assert not stored.is_error, stored.content
    assert listed.structured_content is not None
    assert listed.structured_content["username"] == username
    assert [entry["key"] for entry in listed.structured_content["keys"]] == ["TOKEN"]
    assert events.structured_content is not None
    assert events.structured_content["username"] == username
    assert [event["action"] for event in events.structured_content["events"]] == ["created"]
    assert rest.status_code == 200, rest.text
    assert rest.json()["username"] == username
    assert [key["key"] for key in rest.json()["keys"]] == ["TOKEN"]
    assert audit.returncode == 0, audit.stderr
    assert [json.loads(line)["actor"] for line in audit.stdout.splitlines()] == [username]
    assert cli_list.returncode == 0, cli_list.stderr
    assert [json.loads(line)["key"] for line in cli_list.stdout.splitlines()] == ["TOKEN"]
    assert canary not in jwt_deployment.log()


# --- the Host/Origin guard ----------------------------------------------------------------------------


# Our own routes, beside the SDK's endpoint (which checks Host and Origin itself as well).
OUR_ROUTES = [
    pytest.param(("GET", "/healthz"), id="health"),
    pytest.param(("GET", "/secrets?server=github"), id="rest-list"),
    pytest.param(("POST", "/secrets/set"), id="rest-set"),
    pytest.param(("GET", "/secrets/entry/not-a-real-link"), id="entry-page"),
    pytest.param(("POST", "/secrets/entry/not-a-real-link"), id="entry-post"),
    pytest.param(("GET", "/openapi.json"), id="openapi"),
]


@pytest.mark.parametrize("route", OUR_ROUTES)
@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Host": "evil.example"}, 421, id="foreign-host"),
        pytest.param({"Origin": "http://evil.example"}, 403, id="foreign-origin"),
    ],
)
def test_our_routes_refuse_a_foreign_host_or_origin_before_anything_else(
    http_deployment: Deployment,
    route: tuple[str, str],
    with_token: bool,
    headers: dict[str, str],
    status: int,
) -> None:
    method, path = route
    token = {"Authorization": f"Bearer {http_deployment.token('alice')}"} if with_token else {}
    endpoint = urlsplit(http_deployment.base_url or "")
    connection = http.client.HTTPConnection(endpoint.hostname or "", endpoint.port, timeout=10)
    try:
        body = "{}" if method == "POST" else None
        connection.request(method, path, body, {**JSON_POST, **token, **headers})
        answered = connection.getresponse().status
    finally:
        connection.close()

    # Never 401 or 404: the guard answers before authentication and routing.
    assert answered == status


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Host": "evil.example"}, 421, id="foreign-host"),
        pytest.param({"Host": "127.0.0.1.evil.example:80"}, 421, id="lookalike-host"),
        pytest.param({"Origin": "http://evil.example"}, 403, id="foreign-origin"),
        pytest.param({"Origin": "http://127.0.0.1.evil.example"}, 403, id="lookalike-origin"),
    ],
)
def test_a_foreign_host_or_origin_is_refused_even_with_a_live_token(
    auth_deployment: Deployment, tokens: Tokens, headers: dict[str, str], status: int
) -> None:
    response = probe(auth_deployment, {"Authorization": f"Bearer {tokens.live}", **headers})

    assert response.status == status


# --- what the endpoint says about a body that is not JSON-RPC --------------------------------------


@pytest.mark.parametrize("shape", ["jsonrpc-1.0", "batch"])
def test_a_body_that_is_not_json_rpc_is_refused_without_quoting_it(
    servers: Callable[[str, str], Deployment], tokens: Tokens, shape: str
) -> None:
    deployment = servers("api-tokens", "streamable-http")
    value = new_canary()
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "set_secret", "arguments": {"server": "s", "key": "K", "value": value}},
    }
    # The value last: pydantic's shortened input_value keeps both ends of what it quotes.
    body = json.dumps({**call, "jsonrpc": "1.0"} if shape == "jsonrpc-1.0" else [call])
    endpoint = urlsplit(deployment.endpoint)
    connection = http.client.HTTPConnection(endpoint.hostname or "", endpoint.port, timeout=10)
    try:
        connection.request(
            "POST", endpoint.path, body, {**JSON_POST, "Authorization": f"Bearer {tokens.live}"}
        )
        response = connection.getresponse()
        answer = response.read().decode()
    finally:
        connection.close()

    assert response.status == 400
    assert json.loads(answer)["error"]["message"] == INVALID_MESSAGE
    assert int(response.headers["Content-Length"]) == len(answer.encode())
    assert_no_fragment_of(value, answer)
    assert_no_fragment_of(value, deployment.log())
