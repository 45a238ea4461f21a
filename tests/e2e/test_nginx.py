"""mcp-secrets behind nginx over TLS, configured as ``examples/nginx.conf`` and the README say, at ``/`` and
under a path prefix.

Skipped where nginx is not installed; CI installs it and sets MCP_SECRETS_REQUIRE_NGINX, so there it fails
instead of skipping.
"""

from __future__ import annotations

import os
import re
import secrets as _random
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitRequestURLParams, ElicitResult

from .conftest import (
    POLL_INTERVAL,
    SDK_CLIENT_TIMEOUT,
    STARTUP_POLLS,
    Deployment,
    create_token,
    free_port,
    isolated_env,
    serving,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "nginx.conf"
README = ROOT / "README.md"
ENTRY_PREFIX = "/secrets/entry/"
# What examples/nginx.conf names, and what each becomes here.
EXAMPLE_UPSTREAM = "127.0.0.1:8000"
EXAMPLE_HOST = "secrets.example.com"
EXAMPLE_CERTIFICATE = "/etc/ssl/certs/secrets.example.com.pem"
EXAMPLE_KEY = "/etc/ssl/private/secrets.example.com.key"
EXAMPLE_LOG = "/var/log/nginx/mcp-secrets.log"
EXAMPLE_LISTEN = "listen 443 ssl;"
EXAMPLE_LOCATION = "    location / {\n        proxy_pass http://127.0.0.1:8000;\n    }\n"
PREFIX = "/team-a"


def readme_prefix_locations() -> str:
    """The README's nginx block for a path prefix: the locations that replace the example's ``location /``."""
    blocks = re.findall(r"```nginx\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    (locations,) = [block for block in blocks if f"location {PREFIX}/" in block]
    return str(locations)


def nginx_config(directory: Path, listen: int, upstream: int, prefix: str, tls: tuple[Path, Path]) -> str:
    """examples/nginx.conf for this run (address, certificate, log, server), in an nginx.conf of its own.

    Each name the example gives is replaced exactly once, so the example is the configuration that runs.
    """
    example = EXAMPLE.read_text(encoding="utf-8")
    if prefix:
        example = _replaced(example, EXAMPLE_LOCATION, readme_prefix_locations())
    for named, actual in [
        (EXAMPLE_LISTEN, f"listen 127.0.0.1:{listen} ssl;"),
        (EXAMPLE_CERTIFICATE, str(tls[0])),
        (EXAMPLE_KEY, str(tls[1])),
        (EXAMPLE_LOG, str(directory / "access.log")),
        (f"server_name {EXAMPLE_HOST};", "server_name localhost;"),
    ]:
        example = _replaced(example, named, actual)
    example = example.replace(EXAMPLE_UPSTREAM, f"127.0.0.1:{upstream}")
    temp = " ".join(
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx runs its workers as `nobody`, who could not reach the temporary directories here.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"events {{ worker_connections 64; }}\nhttp {{\n{temp}\n{example}\n}}\n"
    )


def _replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the example no longer holds {old!r} once"
    return text.replace(old, new)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, in PEM files; clients trust the certificate itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = directory / "localhost.pem", directory / "localhost.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate_path, key_path


@dataclass
class Proxied:
    """A real ``serve`` behind a real nginx: its public URL, and where nginx logs its requests."""

    deployment: Deployment
    public_url: str
    access_log: Path
    certificate: Path

    def http(self, timeout: httpx2.Timeout | float = 30, **options: Any) -> httpx2.AsyncClient:
        """A client that trusts the proxy's certificate, as a user's would trust a real one."""
        trusted = ssl.create_default_context(cafile=self.certificate)
        return httpx2.AsyncClient(verify=trusted, trust_env=False, timeout=timeout, **options)

    @asynccontextmanager
    async def connect(self, username: str = "alice", **client_options: Any) -> AsyncIterator[Client]:
        """The SDK's Streamable HTTP client at the public URL, with ``username``'s token."""
        headers = {"Authorization": f"Bearer {self.deployment.token(username)}"}
        async with (
            self.http(SDK_CLIENT_TIMEOUT, headers=headers) as http,
            Client(
                streamable_http_client(f"{self.public_url}/mcp", http_client=http), **client_options
            ) as client,
        ):
            yield client

    def logs(self) -> str:
        """Both logs: the server's and nginx's access log."""
        return self.deployment.log() + self.access_log.read_text(encoding="utf-8", errors="replace")


def missing_nginx() -> str | None:
    """Why nginx cannot run here, or None when it can."""
    return None if shutil.which("nginx") else "nginx not found (Debian: apt-get install nginx)"


@pytest.fixture(scope="module")
def nginx() -> str:
    """The nginx program: skipped where it is not installed, failed if CI requires it."""
    reason = missing_nginx()
    if reason is not None:
        if os.environ.get("MCP_SECRETS_REQUIRE_NGINX", "") not in ("", "0"):
            pytest.fail(f"MCP_SECRETS_REQUIRE_NGINX is set, but {reason}")
        pytest.skip(reason)
    return str(shutil.which("nginx"))


@pytest.fixture(scope="module", params=["", PREFIX], ids=["root", "prefix"])
def proxied(
    request: pytest.FixtureRequest, nginx: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    """``serve`` on Streamable HTTP (with OIDC settings: the metadata) behind nginx, at / or the prefix."""
    prefix: str = request.param
    root = tmp_path_factory.mktemp("nginx")
    listen = free_port()
    public_url = f"https://localhost:{listen}{prefix}"
    # A waiting request_secret gives up well before a test would: a stream nginx held back fails, not hangs.
    env = isolated_env(root, MCP_SECRETS_ENTRY_WAIT_SECONDS="20")
    token = create_token(env, "alice")
    oidc = ["--jwks-url", "http://127.0.0.1:9/jwks", "--issuer", "https://issuer.example/"]
    arguments = ["--public-url", public_url, *oidc, "--audience", f"{public_url}/mcp"]
    with serving(env, "streamable-http", root / "server.log", *arguments) as deployment:
        deployment.tokens["alice"] = token
        upstream = urlsplit(deployment.base_url).port
        assert upstream is not None
        tls = self_signed_certificate(root)
        config = root / "nginx.conf"
        config.write_text(nginx_config(root, listen, upstream, prefix, tls), encoding="utf-8")
        with (root / "nginx.out").open("w") as out:
            process = subprocess.Popen(
                [nginx, "-p", str(root), "-c", str(config), "-e", str(root / "error.log")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_proxied(process, public_url, tls[0], root)
            yield Proxied(deployment, public_url, root / "access.log", tls[0])
        finally:
            process.terminate()
            process.wait(timeout=10)


def _wait_until_proxied(
    process: subprocess.Popen[bytes], public_url: str, certificate: Path, root: Path
) -> None:
    trusted = ssl.create_default_context(cafile=certificate)
    answer = "none"
    with httpx2.Client(verify=trusted, trust_env=False, timeout=2) as http:
        for _ in range(STARTUP_POLLS):
            if process.poll() is not None:
                break
            try:
                status = http.get(f"{public_url}/healthz").status_code
            except httpx2.TransportError as exc:
                answer = type(exc).__name__
            else:
                if status == 200:
                    return
                answer = str(status)
            time.sleep(POLL_INTERVAL)
    errors = root / "error.log"
    shown = (root / "nginx.out").read_text() + (errors.read_text() if errors.exists() else "")
    pytest.fail(f"/healthz through nginx did not answer 200 (last: {answer}):\n{shown}")


async def test_through_nginx_request_secret_hears_its_elicitation_and_progress_while_it_waits(
    proxied: Proxied, canary: str
) -> None:
    server = f"server-{_random.token_hex(4)}"
    progressed = anyio.Event()
    urls: list[str] = []
    pages: list[int] = []

    async def fill_in(url: str) -> None:
        await progressed.wait()  # the user types once the call is waiting, as a person does
        async with proxied.http() as browser:
            page = await browser.get(url)
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None, page.text
            origin = "https://" + urlsplit(url).netloc
            posted = await browser.post(
                url, data={"csrf": csrf[1], "value": canary}, headers={"Origin": origin}
            )
        pages.extend([page.status_code, posted.status_code])

    async with anyio.create_task_group() as tasks:

        async def elicit(_context: Any, params: Any) -> ElicitResult:
            assert isinstance(params, ElicitRequestURLParams), type(params)
            urls.append(params.url)
            tasks.start_soon(fill_in, params.url)
            return ElicitResult(action="accept")

        async def on_progress(_progress: float, _total: float | None, _message: str | None) -> None:
            progressed.set()

        # 2025-11-25: the elicitation and the progress come on the call's own event stream.
        async with proxied.connect(mode="legacy", elicitation_callback=elicit) as alice:
            arguments = {"server": server, "key": "API_TOKEN"}
            result = await alice.call_tool("request_secret", arguments, progress_callback=on_progress)
            listed = await alice.call_tool("list_secret_keys", {"server": server})
            deleted = await alice.call_tool("delete_secret", {"server": server, "key": "API_TOKEN"})

    (url,) = urls
    assert url.startswith(proxied.public_url + ENTRY_PREFIX)
    assert pages == [200, 200]
    assert result.structured_content is not None
    assert result.structured_content["status"] == "stored", result.structured_content
    assert listed.structured_content is not None
    assert [entry["key"] for entry in listed.structured_content["keys"]] == ["API_TOKEN"]
    assert not deleted.is_error
    logs = proxied.logs()
    assert f"{urlsplit(proxied.public_url).path}{ENTRY_PREFIX}..." in logs, "nginx must log the entry page"
    for withheld in (canary, url.rsplit("/", 1)[1], proxied.deployment.token("alice")):
        assert withheld not in logs


async def test_through_nginx_a_401_names_oauth_metadata_that_nginx_serves(proxied: Proxied) -> None:
    async with proxied.http() as http:
        refused = await http.post(f"{proxied.public_url}/mcp", json={})
        named = re.search(r'resource_metadata="([^"]+)"', refused.headers.get("www-authenticate", ""))
        assert named is not None, refused.headers
        metadata = await http.get(named[1])

    assert refused.status_code == 401
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["resource"] == f"{proxied.public_url}/mcp"


async def test_through_nginx_foreign_hosts_and_origins_are_refused_and_forwarded_for_is_not_believed(
    proxied: Proxied,
) -> None:
    claimed = "203.0.113.66"
    health = f"{proxied.public_url}/healthz"
    async with proxied.http() as http:
        own = await http.get(health, headers={"X-Forwarded-For": claimed})
        foreign_host = await http.get(health, headers={"Host": "evil.example"})
        foreign_origin = await http.get(health, headers={"Origin": "https://evil.example"})

    assert [own.status_code, foreign_host.status_code, foreign_origin.status_code] == [200, 421, 403]
    assert claimed not in proxied.deployment.log()


async def test_through_nginx_a_call_over_nginx_default_body_limit_gets_the_servers_answer(
    proxied: Proxied,
) -> None:
    value = "x" * (3 * 2**19)  # 1.5 MiB: nginx's own limit, 1 MiB, would answer with its HTML page

    async with proxied.connect() as alice:
        result = await alice.call_tool("set_secret", {"server": "big", "key": "VALUE", "value": value})

    assert result.is_error
    assert "must be at most 65536 bytes" in str(result.content)
