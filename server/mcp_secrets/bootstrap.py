"""Start-up: find or make the master key, open the store, build the Secrets service.

The master key never comes from the database. On the embedded SQLite store a
first run generates one into a 0600 file in the user's config directory; with
MongoDB an explicit key is required, since several replicas must share it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mcp_secrets.config import Settings, load_settings
from mcp_secrets.crypto import (
    SecretEncryptor,
    generate_master_key,
    is_legacy_ciphertext,
    key_id_for,
    parse_master_key,
)
from mcp_secrets.errors import ConfigurationError, UnreadableRecordError
from mcp_secrets.file_modes import others_may_read, others_may_write, owned_elsewhere
from mcp_secrets.secrets import Secrets
from mcp_secrets.store import SecretStore, open_store
from mcp_secrets.store.sqlite import make_private_directories, sync_new_names

logger = logging.getLogger(__name__)
# Thousands of keys and comments: a larger file was named by mistake (a disk image, a log), and was read
# whole into memory.
MAX_KEY_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class MasterKeys:
    """The configured master keys (the first writes) and where they came from, for the summary."""

    keys: list[bytes]
    source: str
    generated: bool = False


def _parse_keys(text: str, where: str) -> list[bytes]:
    entries = [line.strip() for line in text.replace(",", "\n").splitlines()]
    entries = [entry for entry in entries if entry and not entry.startswith("#")]
    if not entries:
        raise ConfigurationError(f"{where} holds no master key")
    try:
        keys = [parse_master_key(entry) for entry in entries]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    # Refused here rather than by the encryptor only, so that the message says where to remove it.
    for index, key in enumerate(keys):
        if key in keys[:index]:
            raise ConfigurationError(f"{where} holds master key {key_id_for(key)} twice: keep one")
    return keys


def _read_key_file(path: Path, setting: str | None = None) -> list[bytes]:
    """The keys in ``path``; a refusal names it by ``setting``, the variable that gave it, if any."""
    named = f"{setting} {path}" if setting else f"the master key file {path}"
    try:
        # Non-blocking: opening a named pipe would otherwise wait for a writer, and the start with it.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as key_file:
            if not stat.S_ISREG(os.fstat(key_file.fileno()).st_mode):
                raise ConfigurationError(f"{named} is not a regular file")
            content = key_file.read(MAX_KEY_FILE_BYTES + 1)
            if len(content) > MAX_KEY_FILE_BYTES:
                raise ConfigurationError(
                    f"{named} is larger than a key file can be "
                    f"({MAX_KEY_FILE_BYTES} bytes): is it the right file?"
                )
            # "utf-8-sig": the byte order mark Windows editors put before UTF-8 text is not part of a key.
            text: str | None = content.decode("utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"{named} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:  # raw key bytes, say: the codec's message would quote one of them
        text = None  # refused out of this block: the codec's error holds the file's bytes, every key in it
    if text is None:
        raise ConfigurationError(
            f"{named} is not text: it holds master keys written as base64, one a line "
            "(`mcp-secrets keygen` makes one)"
        )
    mode = path.stat().st_mode
    if others_may_write(mode):  # values stored from then on would be encrypted under a key they know
        logger.warning(
            "the master key file %s is writable by other users, who can put a key of theirs in it; "
            "run: chmod 600 %s",
            path,
            path,
        )
    elif others_may_read(mode):
        logger.warning("the master key file %s is readable by other users; run: chmod 600 %s", path, path)
    if (elsewhere := owned_elsewhere(path)) is not None:
        logger.warning("the master key file %s %s, who can put a key of theirs in it", path, elsewhere)
    return _parse_keys(text, named)


def _write_new_key_file(path: Path) -> bool:
    """Create ``path`` owner-only with a new key; False when another first run created it meanwhile.

    The key is written to a temporary file beside ``path``, then hard-linked there. A link never
    replaces a file, so two first runs at once both end up with the one key linked first, and no
    run reads the file empty or half-written (a crash leaves only the temporary file behind).
    """
    temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
    try:
        made = make_private_directories(path.parent)
        _write_key(temporary)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create the file in place instead
            _write_key(path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"the master key file {path} cannot be created: {exc.strerror}") from None
    sync_new_names(path.parent, made)
    return True


def _write_key(path: Path) -> None:
    """Create ``path`` owner-only, holding a new key; a file that cannot be written whole is removed."""
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as key_file:
            if os.name == "posix":
                os.fchmod(descriptor, 0o600)  # the umask may have taken the owner's bits too
            key_file.write(generate_master_key() + "\n")
            # On disk before any secret is encrypted under it: the database syncs its own writes.
            key_file.flush()
            os.fsync(key_file.fileno())
    except OSError:  # a disk full: an empty file would read as "holds no master key" next time
        path.unlink(missing_ok=True)
        raise


def refuse_keys_set_twice(settings: Settings) -> None:
    """Refuse a master key in the environment and a key file at once: which one is in use is unclear."""
    if settings.master_key is not None and settings.master_key_file is not None:
        raise ConfigurationError(
            "MCP_SECRETS_MASTER_KEY and MCP_SECRETS_MASTER_KEY_FILE are both set: set one, so the keys "
            "in use are the ones you edit"
        )


def require_explicit_key(settings: Settings) -> None:
    """Refuse keys configured twice, or MongoDB without a configured key, before a store is opened.

    A URL that is neither MongoDB's nor SQLite's is left for the store to refuse: no key would help.
    """
    refuse_keys_set_twice(settings)
    if settings.master_key is None and settings.master_key_file is None and settings.uses_mongodb:
        raise ConfigurationError(
            "MongoDB needs an explicit master key, shared by every replica: set MCP_SECRETS_MASTER_KEY "
            "or MCP_SECRETS_MASTER_KEY_FILE (`mcp-secrets keygen` makes one)"
        )


def load_master_keys(
    settings: Settings, store: SecretStore | None = None, *, generate: bool = False
) -> MasterKeys:
    """The master keys from the environment, a key file, or (embedded store, ``generate``) a new key file.

    ``store`` lets a first run refuse to generate a key over secrets that an
    earlier, now missing, key encrypted.
    """
    require_explicit_key(settings)
    if settings.master_key is not None:
        return MasterKeys(
            _parse_keys(settings.master_key.get_secret_value(), "MCP_SECRETS_MASTER_KEY"),
            "MCP_SECRETS_MASTER_KEY",
        )
    if settings.master_key_file is not None:
        path = settings.master_key_file.expanduser()
        return MasterKeys(_read_key_file(path, "MCP_SECRETS_MASTER_KEY_FILE"), f"key file {path}")
    path = settings.default_key_file
    if _key_file_exists(path):
        return MasterKeys(_read_key_file(path), f"key file {path}")
    # Before the hint to generate one: over secrets (a database restored without its key) serve refuses to.
    if store is not None and store.count_secrets() > 0:
        if settings.legacy_key is not None and _legacy_only(store):
            # The legacy key encrypted them, and migrate-legacy re-encrypts them to a master key.
            raise ConfigurationError(
                "the store holds records of the original iv:authTag:ciphertext format only, and no master "
                "key to re-encrypt them to is configured: make one (`mcp-secrets keygen`) and set "
                "MCP_SECRETS_MASTER_KEY or MCP_SECRETS_MASTER_KEY_FILE to it"
            )
        raise ConfigurationError(
            f"the store already holds secrets but no master key is configured and {path} is missing; "
            "set MCP_SECRETS_MASTER_KEY or MCP_SECRETS_MASTER_KEY_FILE to the key that encrypted them"
        )
    if not generate:
        raise ConfigurationError(
            f"no master key is configured: set MCP_SECRETS_MASTER_KEY or MCP_SECRETS_MASTER_KEY_FILE, "
            f"or run `mcp-secrets serve` once to generate {path}"
        )
    if not _write_new_key_file(path):  # another first run made it meanwhile: its key is the one
        return MasterKeys(_read_key_file(path), f"key file {path}")
    return MasterKeys(_read_key_file(path), f"key file {path} (generated now)", generated=True)


def _key_file_exists(path: Path) -> bool:
    """Whether the generated key file is there; a config directory this user cannot look in is said so.

    ``Path.exists`` raised PermissionError there, which the CLI took for stdout that could not be written.
    """
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):  # missing: one is made there, or making it says why not
        return False
    except OSError as exc:
        raise ConfigurationError(
            f"MCP_SECRETS_CONFIG_DIR {path.parent} cannot be looked in for the master key file "
            f"({exc.strerror}): make it a directory this user can read, or set MCP_SECRETS_MASTER_KEY or "
            "MCP_SECRETS_MASTER_KEY_FILE"
        ) from None
    return True


def _legacy_only(store: SecretStore, batch_size: int = 1000) -> bool:
    """True when every record of ``store`` is of the original format (read only when no key is found)."""
    after = None
    try:
        while batch := store.scan_secrets(after, batch_size):
            if not all(is_legacy_ciphertext(record.value) for record in batch):
                return False
            after = (batch[-1].username, batch[-1].server, batch[-1].key)
    except UnreadableRecordError:
        return False
    return True


def open_configured_store(settings: Settings, *, create: bool = True) -> SecretStore:
    """The store ``MCP_SECRETS_DATABASE_URL`` names, or the embedded SQLite file (made if ``create``)."""
    return open_store(
        settings.database_url_text,
        default_sqlite_path=str(settings.default_database_path),
        busy_timeout=settings.sqlite_busy_timeout,
        create=create,
    )


def build_secrets(
    settings: Settings, store: SecretStore, *, generate_key: bool = False, check_key_ids: bool = True
) -> tuple[Secrets, MasterKeys]:
    """The Secrets service over ``store``; ``generate_key`` allows a first-run key on the embedded store.

    ``check_key_ids`` warns of records under a master key not configured (see ``warn_of_unconfigured_keys``):
    left to the commands that read every record and name each such key themselves (verify, rotate).
    """
    master_keys = load_master_keys(settings, store, generate=generate_key)
    legacy_key = settings.legacy_key.get_secret_value() if settings.legacy_key else None
    encryptor = SecretEncryptor(master_keys.keys, legacy_key=legacy_key)
    secrets = Secrets(store, encryptor, max_secrets_per_user=settings.max_secrets_per_user)
    if check_key_ids:
        warn_of_unconfigured_keys(secrets, master_keys)
    return secrets, master_keys


def warn_of_unconfigured_keys(secrets: Secrets, master_keys: MasterKeys) -> None:
    """Warn when a record at either end of the store is under a master key that is not configured.

    A wrong key (a typo, another machine's, an old backup's) would otherwise go unnoticed until reads
    fail one by one, while new values are stored under it. A warning, not a refusal: the README's
    recovery from a lost key serves a new key over the old records until they are stored again, and a
    few records read are a hint, not proof. A correct rotation raises none, since every process reads
    the new key before any writes with it, and the old one stays until no record is under it.
    """
    try:
        found = secrets.unconfigured_key_ids()
    except UnreadableRecordError:
        return  # a record another tool broke: verify names it, and it stops no start
    if not found:
        return
    source = master_keys.source
    where = source if source.startswith("MCP_SECRETS_") else f"the {source}"
    several = len(found) > 1
    logger.warning(
        "the store holds records under master key%s %s, which %s not configured (%s holds %s): those "
        "records do not decrypt, and values stored now are encrypted under %s. If these are not the keys "
        "the store was written with, run `mcp-secrets verify` and check %s",
        "s" if several else "",
        ", ".join(found),
        "are" if several else "is",
        where,
        ", ".join(secrets.encryptor.key_ids),
        secrets.encryptor.active_key_id,
        where,
    )


def keyless_secrets(settings: Settings, store: SecretStore) -> Secrets:
    """The Secrets service over ``store`` without a master key: it lists names and deletes, never a value.

    The commands that need no value (``list``, ``delete``) run with this, so an administrator's shell
    holds no key for them, and a lost key still lets one see what must be stored again.
    """
    return Secrets(store, None, max_secrets_per_user=settings.max_secrets_per_user)


def open_secrets(settings: Settings | None = None, *, create: bool = True) -> Secrets:
    """The Secrets service configured by the environment, for Python services and scripts.

    Reads the same ``MCP_SECRETS_*`` settings as the server and never generates
    a master key. With ``create=False`` a SQLite file that does not exist raises
    StoreUnavailableError instead of being created empty, so that a mistyped path
    fails rather than reads as a store holding no secrets. When done, call
    ``secrets.close()`` (it writes the uses still pending), then ``secrets.store.close()``.
    """
    settings = settings or load_settings()
    require_explicit_key(settings)  # before connecting, so a missing key fails fast
    store = open_configured_store(settings, create=create)
    try:
        return build_secrets(settings, store)[0]
    except BaseException:
        store.close()
        raise


def describe_store(settings: Settings) -> str:
    """The store for humans, without credentials: a file path, or a MongoDB host and database."""
    url = (settings.database_url_text or "").strip()  # as open_store reads it: a line end often follows
    if not url:
        return f"SQLite {settings.default_database_path}"
    if url.startswith("sqlite:///"):
        return f"SQLite {url[len('sqlite:///') :]}"
    if url.startswith("mongodb+srv://"):
        # parse_uri would look the SRV record up again, just after the store did: a DNS fault then would
        # stop a server whose store is open. The name the URL gives says where the servers are.
        parts = urlsplit(url)
        return f"MongoDB {parts.hostname} (SRV), database {unquote(parts.path[1:]) or 'mcp_secrets'}"
    from pymongo.uri_parser import parse_uri  # noqa: PLC0415 - only needed for MongoDB

    parsed = parse_uri(url, validate=False, warn=True)
    hosts = ",".join(f"{host}:{port}" for host, port in parsed["nodelist"])
    return f"MongoDB {hosts}, database {parsed.get('database') or 'mcp_secrets'}"
