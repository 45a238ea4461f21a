"""mcp-secrets: per-user encrypted secrets for MCP servers, served over MCP.

The public names are imported when first used, not with the package: a started
``mcp-secrets`` closes itself to other processes (``mcp_secrets.launch``) before
it imports any library, and every module of the package imports this one first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_secrets.bootstrap import open_secrets
    from mcp_secrets.config import Settings
    from mcp_secrets.crypto import SecretEncryptor, generate_master_key
    from mcp_secrets.errors import (
        ConfigurationError,
        DecryptionError,
        InvalidInputError,
        SecretNotFoundError,
        SecretsError,
        StoreUnavailableError,
        UnauthorisedError,
        UnreadableRecordError,
        WriteUnconfirmedError,
    )
    from mcp_secrets.secrets import SecretKeyInfo, Secrets, UpdateResult

__version__ = "0.1.0"

# Each public name, and the module it comes from.
_HOMES = {
    "ConfigurationError": "errors",
    "DecryptionError": "errors",
    "InvalidInputError": "errors",
    "SecretEncryptor": "crypto",
    "SecretKeyInfo": "secrets",
    "SecretNotFoundError": "errors",
    "Secrets": "secrets",
    "SecretsError": "errors",
    "Settings": "config",
    "StoreUnavailableError": "errors",
    "UnauthorisedError": "errors",
    "UnreadableRecordError": "errors",
    "UpdateResult": "secrets",
    "WriteUnconfirmedError": "errors",
    "generate_master_key": "crypto",
    "open_secrets": "bootstrap",
}

__all__ = [
    "ConfigurationError",
    "DecryptionError",
    "InvalidInputError",
    "SecretEncryptor",
    "SecretKeyInfo",
    "SecretNotFoundError",
    "Secrets",
    "SecretsError",
    "Settings",
    "StoreUnavailableError",
    "UnauthorisedError",
    "UnreadableRecordError",
    "UpdateResult",
    "WriteUnconfirmedError",
    "__version__",
    "generate_master_key",
    "open_secrets",
]


# Hidden from type checkers, which know the names from the imports above: to them a module __getattr__
# would make every name exist, a misspelt one included.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:  # noqa: ANN401 - any of the public names
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'mcp_secrets' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"mcp_secrets.{home}"), name)
        globals()[name] = value  # looked up once
        return value


def __dir__() -> list[str]:
    return sorted(__all__)
