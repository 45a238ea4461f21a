"""mcp-secrets: per-user encrypted secrets for MCP servers, served over MCP."""

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
)
from mcp_secrets.secrets import SecretKeyInfo, Secrets, UpdateResult

__version__ = "0.1.0"

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
    "UpdateResult",
    "__version__",
    "generate_master_key",
    "open_secrets",
]
