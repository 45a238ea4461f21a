"""MCP Inspector's web UI in headless Chromium, as the README has users connect it over Streamable HTTP.

The Inspector (the version ``test_inspector.py`` pins, fetched by ``npx``) serves its UI and makes the
MCP connection itself; the browser drives it. Skipped where Chromium or ``npx`` is missing; CI sets
MCP_SECRETS_REQUIRE_BROWSER and MCP_SECRETS_REQUIRE_INSPECTOR, so that there it fails instead.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from e2e.conftest import (
    BROWSER_TIMEOUT,
    POLL_INTERVAL,
    Deployment,
    free_port,
    isolated_env,
    serving,
    stdout_path,
)
from e2e.test_inspector import INSPECTOR, INSPECTOR_TIMEOUT, NODE, npx

pytestmark = pytest.mark.browser

UP = "MCP Inspector Web is up and running"
DIALOG = (By.CSS_SELECTOR, "[role=dialog]")


@contextmanager
def inspector_web(config: Path, home: Path, api_token: str, output: Path) -> Iterator[str]:
    """The Inspector's web server on ``config``'s servers, read-only: its address. It prints to ``output``."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),  # its storage and settings; npm's cache stays the user's, fetched once
        "npm_config_cache": os.environ.get("npm_config_cache", str(Path.home() / ".npm")),  # noqa: SIM112
        "MCP_INSPECTOR_API_TOKEN": api_token,
        "MCP_INSPECTOR_SECRET_STORE": "memory",
        "MCP_AUTO_OPEN_ENABLED": "false",
        "CLIENT_PORT": str(port),
        "MCP_SANDBOX_PORT": str(free_port()),
        "MCP_APP_ORIGIN_PORT": str(free_port()),
    }
    command = [npx(), "--yes", "-p", NODE, "-p", INSPECTOR, "--", "mcp-inspector", "--config", str(config)]
    with output.open("w") as printed:
        # A session of its own: npx runs the Inspector as a child, which a stop must reach too.
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=printed,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while UP not in output.read_text():
            assert process.poll() is None, output.read_text()
            time.sleep(POLL_INTERVAL)
        yield f"http://127.0.0.1:{port}/?MCP_INSPECTOR_API_TOKEN={api_token}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            with suppress(ProcessLookupError):  # what is left of it
                os.killpg(process.pid, signal.SIGKILL)


def waited(browser: webdriver.Chrome, by: str, value: str, *, hidden: bool = False) -> WebElement:
    """The first displayed element found (or ``hidden`` too, as a switch's checkbox is), once there is one."""

    def shown(driver: webdriver.Chrome) -> WebElement | bool:
        found = [element for element in driver.find_elements(by, value) if hidden or element.is_displayed()]
        return found[0] if found else False

    element: WebElement = WebDriverWait(
        browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)
    ).until(shown)
    return element


def click(browser: webdriver.Chrome, element: WebElement) -> None:
    # By script: the Inspector lays hints over some of its buttons, which a pointer click would hit instead.
    browser.execute_script("arguments[0].click()", element)


def button(text: str) -> tuple[str, str]:
    return By.XPATH, f"//button[normalize-space()='{text}']"


# pytest-timeout's bound, for a run that has to fetch the Inspector and Node.js first.
@pytest.mark.timeout(INSPECTOR_TIMEOUT * 2)
def test_request_secret_in_the_inspectors_web_ui_stores_the_value_and_closes_its_dialog_by_itself(
    browser: webdriver.Chrome, tmp_path: Path, canary: str
) -> None:
    printed = tmp_path / "inspector.out"
    env = isolated_env(tmp_path)
    server = f"server-{_random.token_hex(4)}"
    with serving(env, "streamable-http", tmp_path / "server.log") as deployment:
        config = tmp_path / "inspector.json"
        config.touch(mode=0o600)  # it holds a bearer token
        entry = {
            "type": "streamable-http",
            "url": deployment.endpoint,
            "headers": {"Authorization": f"Bearer {deployment.token('alice')}"},
        }
        config.write_text(json.dumps({"mcpServers": {"mcp-secrets": entry}}))
        home = tmp_path / "home"
        home.mkdir()
        with inspector_web(config, home, _random.token_urlsafe(24), printed) as address:
            browser.get(address)
            click(
                browser,
                waited(
                    browser,
                    By.CSS_SELECTOR,
                    "[aria-label='Connect or disconnect \"mcp-secrets\"']",
                    hidden=True,
                ),
            )
            click(browser, waited(browser, By.XPATH, "//span[normalize-space()='Tools']"))
            click(browser, waited(browser, *button("request_secret")))
            waited(browser, *button("Execute Tool"))
            server_field, key_field = browser.find_elements(By.CSS_SELECTOR, "input[aria-describedby]")[:2]
            server_field.send_keys(server)
            key_field.send_keys("API_TOKEN")
            click(browser, waited(browser, *button("Execute Tool")))
            inspector_tab = browser.current_window_handle
            click(browser, waited(browser, *button("Open in Browser")))
            WebDriverWait(browser, BROWSER_TIMEOUT).until(lambda driver: len(driver.window_handles) == 2)
            (entry_tab,) = [handle for handle in browser.window_handles if handle != inspector_tab]
            browser.switch_to.window(entry_tab)
            waited(browser, By.ID, "value").send_keys(canary)
            click(browser, waited(browser, *button("Store secret")))
            WebDriverWait(browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
                lambda driver: driver.title.startswith("Secret stored")
            )
            addresses = [browser.current_url]
            browser.switch_to.window(inspector_tab)
            # No "I've completed it" clicked: the server's notification closes the dialog.
            result = waited(
                browser, By.XPATH, "//*[contains(text(), 'stored. Its value was never seen here')]"
            )
            result_text = result.text
            # It fades out.
            WebDriverWait(browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
                lambda driver: not any(shown.is_displayed() for shown in driver.find_elements(*DIALOG))
            )
            page = browser.page_source
            console = json.dumps(browser.get_log("browser"))
            addresses.append(browser.current_url)

        assert result_text == f"Secret API_TOKEN for server {server} stored. Its value was never seen here."
        assert (server, "API_TOKEN") in keys_of(deployment)
        for seen in (page, console, *addresses, printed.read_text(), deployment.log()):
            assert canary not in seen
        assert canary not in stdout_path(deployment.log_path).read_text()


def keys_of(deployment: Deployment) -> list[tuple[str, str]]:
    """Alice's (server, key) pairs, as ``mcp-secrets list`` reads them from the deployment's store."""
    listed = deployment.cli("list", "--user", "alice", "--json")
    assert listed.returncode == 0, listed.stderr
    return [(record["server"], record["key"]) for record in map(json.loads, listed.stdout.splitlines())]
