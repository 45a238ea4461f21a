"""Make docs/entry-page.png: a real server, a real entry link, the form in headless Chromium before submit.

Run from the checkout, with the test extras installed and Chromium with its chromedriver on PATH:
    python docs/make_screenshot.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent
# The end-to-end fixtures start the server and the browser; pytest imports them from tests/ the same way.
sys.path.insert(0, str(ROOT / "tests"))

from e2e.conftest import (  # noqa: E402
    create_token,
    headless_chromium,
    isolated_env,
    missing_browser,
    request_entry_link,
    serving,
)

SCREENSHOT = ROOT / "docs" / "entry-page.png"
EXAMPLE_VALUE = "ghp_not-a-real-token"  # typed, never submitted: the field shows only dots


def main() -> None:
    """Start a server, ask it for an entry link as alice, and save the page with a value typed in."""
    reason = missing_browser()
    if reason is not None:
        sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="mcp-secrets-screenshot-") as tmp:
        root = Path(tmp)
        env = isolated_env(root, MCP_SECRETS_LOG_LEVEL="INFO")
        token = create_token(env, "alice")
        with serving(env, "streamable-http", root / "server.log") as deployment:
            deployment.tokens["alice"] = token
            url = anyio.run(request_entry_link, deployment, "alice", "github", "GITHUB_TOKEN")
            with headless_chromium(900, 700) as browser:
                browser.get(url)
                browser.find_element(By.ID, "value").send_keys(EXAMPLE_VALUE)
                if not browser.save_screenshot(str(SCREENSHOT)):
                    sys.exit(f"Chromium could not save {SCREENSHOT}")
    print(f"wrote {SCREENSHOT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
