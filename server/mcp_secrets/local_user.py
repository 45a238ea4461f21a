"""The local user: whom ``serve`` on stdio and the administration commands act for by default.

Apart from ``identity``, which loads the SDK: the commands that only read or write the store need this
name, and none of the SDK.
"""

from __future__ import annotations

import getpass

from mcp_secrets.errors import InvalidInputError
from mcp_secrets.secrets import USERNAME_RULE, validate_username


def local_username(configured: str | None) -> str:
    """``MCP_SECRETS_USER`` when set, else the OS login name; validated either way."""
    try:
        # A uid without a passwd entry and no USER in the environment (docker run --user) has no login name.
        name = configured or getpass.getuser()
    except (KeyError, OSError):
        raise InvalidInputError(
            "this process has no login name to act for; set MCP_SECRETS_USER to the username"
        ) from None
    try:
        return validate_username(name)
    except InvalidInputError:
        if configured:  # the setting is what to correct, not the login name it stands in for
            raise InvalidInputError(
                f"MCP_SECRETS_USER is not a valid username: it must be {USERNAME_RULE}"
            ) from None
        raise InvalidInputError(
            f"the local username is not a valid username; set MCP_SECRETS_USER to {USERNAME_RULE}"
        ) from None
