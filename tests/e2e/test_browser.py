"""The entry page in a real browser: headless Chromium opens a ``request_secret`` link and stores a secret.

Skipped where Chromium and chromedriver are not installed; CI installs them and
sets MCP_SECRETS_REQUIRE_BROWSER, so there it fails instead of skipping.
"""

from __future__ import annotations

import secrets as _random
from urllib.parse import quote

import httpx2
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from e2e.conftest import BROWSER_TIMEOUT, Deployment, request_entry_link, stdout_path

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


def heading(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.TAG_NAME, "h1").text


async def keys_of(deployment: Deployment, username: str) -> list[tuple[str, str]]:
    async with deployment.connect(username) as client:
        listed = await client.call_tool("list_secret_keys", {})
    assert not listed.is_error, listed.content
    assert listed.structured_content is not None
    return [(entry["server"], entry["key"]) for entry in listed.structured_content["keys"]]


async def test_user_stores_a_secret_through_the_entry_page_once(
    browser: webdriver.Chrome, streamable_http_deployment: Deployment, canary: str
) -> None:
    deployment = streamable_http_deployment
    server, key = f"server-{_random.token_hex(4)}", "API_TOKEN"
    url = await request_entry_link(deployment, "alice", server, key)

    browser.get(url)
    shown = [term.text for term in browser.find_elements(By.CSS_SELECTOR, "dl dd")]
    body = browser.find_element(By.TAG_NAME, "body")
    cookie = browser.get_cookie("mcp_secrets_csrf")
    assert browser.title.startswith("Enter a secret")
    assert shown == [server, key, "alice"]
    # The styles carry a CSP nonce: a computed colour proves the browser applied them.
    assert body.value_of_css_property("background-color") == "rgba(244, 245, 247, 1)"
    assert cookie is not None
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    browser.find_element(By.ID, "value").send_keys(canary)
    submit = browser.find_element(By.XPATH, "//button[normalize-space()='Store secret']")
    submit.click()
    # Wait for the next page. Not by the button going stale: while the page is being replaced,
    # chromedriver can answer a question about the old button with an "unknown error" instead.
    WebDriverWait(browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: not driver.title.startswith("Enter a secret")
    )
    stored_title, stored_page = browser.title, browser.page_source

    assert stored_title.startswith("Secret stored"), browser.find_element(By.TAG_NAME, "body").text
    assert heading(browser) == "Secret stored"
    assert canary not in stored_page
    assert server in stored_page
    assert (server, key) in await keys_of(deployment, "alice")

    browser.get(url)
    expired_title, expired_heading = browser.title, heading(browser)
    with httpx2.Client(trust_env=False, timeout=BROWSER_TIMEOUT) as http:
        again = http.get(url)

    assert expired_title.startswith("Link expired")
    assert expired_heading == "Link expired"
    assert again.status_code == 410
    assert "Link expired" in again.text
    log = deployment.log()
    assert "DEBUG" in log, "the server must have logged at DEBUG for this check to mean anything"
    assert canary not in log
    assert url.rsplit("/", 1)[1] not in log, "the entry token must not be logged"
    assert canary not in stdout_path(deployment.log_path).read_text()


async def test_two_links_opened_from_another_site_each_store_their_secret(
    browser: webdriver.Chrome, streamable_http_deployment: Deployment, canary: str
) -> None:
    # A web chat shows two links (a gateway asks for two keys); the user opens both, then fills each in.
    # The navigations come from another site, so the browser sends neither tab's SameSite=Strict cookie.
    deployment = streamable_http_deployment
    server, keys = f"server-{_random.token_hex(4)}", ["FIRST", "SECOND"]
    urls = [await request_entry_link(deployment, "alice", server, key) for key in keys]
    links = zip(keys, urls, strict=True)
    chat = "".join(f'<a id="{key}" href="{url}" target="_blank">{key}</a> ' for key, url in links)
    browser.get("data:text/html," + quote(chat))
    chat_tab = browser.current_window_handle
    for opened, key in enumerate(keys, start=2):
        browser.switch_to.window(chat_tab)
        browser.find_element(By.ID, key).click()
        tabs_open = WebDriverWait(browser, BROWSER_TIMEOUT)
        tabs_open.until(lambda driver, n=opened: len(driver.window_handles) == n)
    entry_tabs = [handle for handle in browser.window_handles if handle != chat_tab]

    headings = []
    for tab in entry_tabs:
        browser.switch_to.window(tab)
        WebDriverWait(browser, BROWSER_TIMEOUT).until(lambda driver: driver.find_elements(By.ID, "value"))
        browser.find_element(By.ID, "value").send_keys(canary)
        browser.find_element(By.XPATH, "//button[normalize-space()='Store secret']").click()
        WebDriverWait(browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
            lambda driver: (
                driver.find_element(By.TAG_NAME, "h1").text != "Enter a secret"
                or driver.find_elements(By.ID, "problem")
            )
        )
        headings.append(heading(browser))

    assert len(entry_tabs) == len(keys)
    assert headings == ["Secret stored"] * len(keys)
    assert {(server, key) for key in keys} <= set(await keys_of(deployment, "alice"))


async def test_a_pem_key_pasted_into_the_field_is_refused_not_stored_without_its_line_breaks(
    browser: webdriver.Chrome, streamable_http_deployment: Deployment, canary: str
) -> None:
    deployment = streamable_http_deployment
    server, key = f"server-{_random.token_hex(4)}", "PRIVATE_KEY"
    url = await request_entry_link(deployment, "alice", server, key)
    pem = f"-----BEGIN PRIVATE KEY-----\n{canary}\n{canary}\n-----END PRIVATE KEY-----"

    browser.get(url)
    browser.find_element(By.ID, "value").click()
    browser.execute_cdp_cmd("Input.insertText", {"text": pem})  # as a paste types it
    browser.find_element(By.XPATH, "//button[normalize-space()='Store secret']").click()
    WebDriverWait(browser, BROWSER_TIMEOUT, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.find_elements(By.ID, "problem")
    )
    problem = browser.find_element(By.ID, "problem").text

    assert "line breaks" in problem
    assert canary not in browser.page_source
    assert (server, key) not in await keys_of(deployment, "alice")
