"""Every error mcp-secrets raises on purpose.

Messages name the field or record at fault and never carry a secret value,
so any of these can be shown to a user, returned as a tool error or logged.
"""

from __future__ import annotations

import signal

# The command's exit statuses: any error, and a configuration or input the command refuses (argparse's 2).
EXIT_ERROR = 1
EXIT_CONFIGURATION = 2


class SecretsError(Exception):
    """Base class of every error raised on purpose by mcp-secrets."""


class InvalidInputError(SecretsError, ValueError):
    """Raised when a username, server, key, value or action does not pass validation."""


class SecretNotFoundError(SecretsError, LookupError):
    """Raised when a secret, a server's secrets or a token that was asked for does not exist."""


class StoreUnavailableError(SecretsError):
    """Raised when the secret store (SQLite file or MongoDB server) cannot be reached."""


class WriteUnconfirmedError(StoreUnavailableError):
    """Raised when MongoDB made a change but did not confirm it as its write concern asks: it may not last.

    Or when the connection failed once the change was sent (``made`` False): it may not have been made.
    """

    def __init__(self, message: str, *, made: bool = True) -> None:
        super().__init__(message)
        self.made = made


class UnreadableRecordError(StoreUnavailableError):
    """Raised when a stored record has a field missing or of another type: another tool wrote it.

    The message names the record by its names (username, server, key; a token's id), never by a value;
    ``record`` holds those names when each is a string, so that a caller can read on after it.
    """

    def __init__(self, message: str, *, record: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.record = record


class DecryptionError(SecretsError):
    """Raised when a stored ciphertext does not decrypt: tampered, moved to another record, or wrong key."""


class UnauthorisedError(SecretsError):
    """Raised when a caller has no verified identity, or a token is unknown, revoked or expired."""


class ConfigurationError(SecretsError):
    """Raised when a setting (master key, database URL, verifier) is missing or malformed, at start-up."""


class EntryLinkError(SecretsError):
    """Raised when an entry link is unknown, expired or already used."""

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


def how_it_stopped(stop: BaseException) -> str:
    """What ended a long run early, for its audit event: a signal (Ctrl-C's is SIGINT) or an error.

    The CLI raises SIGTERM and SIGHUP as a ``KeyboardInterrupt`` carrying the signal's ``number``.
    """
    if isinstance(stop, KeyboardInterrupt):
        return f"stopped by {signal.Signals(getattr(stop, 'number', signal.SIGINT)).name}"
    return "stopped by an error"
