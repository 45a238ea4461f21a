"""The ``mcp-secrets`` command: argument parsing and printing only; the library does the work.

Messages for people go to stderr; stdout carries only what a script may
capture (a key from ``keygen``, a token from ``token create``, the listings of
``list``, ``audit`` and ``token list``) and, under ``serve --transport stdio``,
the MCP protocol itself.
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import NoReturn

from mcp_secrets import __version__
from mcp_secrets.bootstrap import (
    MasterKeys,
    build_secrets,
    keyless_secrets,
    open_configured_store,
    refuse_keys_set_twice,
    require_explicit_key,
)
from mcp_secrets.config import Settings, load_settings
from mcp_secrets.crypto import LEGACY_KEY_ID, generate_master_key
from mcp_secrets.errors import (
    EXIT_CONFIGURATION,
    EXIT_ERROR,
    ConfigurationError,
    InvalidInputError,
    SecretNotFoundError,
    SecretsError,
    StoreUnavailableError,
)
from mcp_secrets.hardening import forbid_inspection
from mcp_secrets.local_user import local_username
from mcp_secrets.logs import configure_logging, say
from mcp_secrets.retention import DEFAULT_BATCH_SIZE as PRUNE_BATCH_SIZE
from mcp_secrets.retention import MAX_BATCH_SIZE as MAX_PRUNE_BATCH_SIZE
from mcp_secrets.retention import archive_file, prune_events
from mcp_secrets.rotation import DEFAULT_BATCH_SIZE, RecordFailure, RotationReport, rotate, verify
from mcp_secrets.secrets import MAX_VALUE_BYTES, SecretKeyInfo, Secrets, validate_name, validate_username
from mcp_secrets.stop_signals import Terminated, stop_signals_held, terminated_as_an_exception
from mcp_secrets.store import SecretStore, printable_json
from mcp_secrets.terminal import UnwritableOutput, print_table, printable, progress_bar, write_out
from mcp_secrets.tokens import ApiTokens

MAX_TOKEN_DAYS = 36500  # a hundred years: long enough for any token, short enough to stay a date
MAX_RETENTION_DAYS = MAX_TOKEN_DAYS  # and for a retention period: its cut-off must stay a date too
MAX_COUNT = 1_000_000_000  # beyond any store's rows, well within SQLite's integers
AUDIT_PAGE = 1000  # events `audit` reads and prints at a time


# The settings `serve` takes as options, by option: an invalid one is named as the user typed it.
_SETTING_OPTIONS = {
    "transport": "--transport",
    "host": "--host",
    "port": "--port",
    "stateless_http": "--stateless",
    "jwks_url": "--jwks-url",
    "issuer": "--issuer",
    "audience": "--audience",
    "username_claim": "--username-claim",
    "log_level": "--log-level",
    "public_url": "--public-url",
    "servers": "--servers",
}


def _settings(args: argparse.Namespace) -> Settings:
    """Environment settings, with the options given on the command line on top."""
    overrides = {
        name: getattr(args, name) for name in _SETTING_OPTIONS if getattr(args, name, None) is not None
    }
    return load_settings(given_as={name: _SETTING_OPTIONS[name] for name in overrides}, **overrides)


def _say_if_generated(keys: MasterKeys) -> None:
    """The first start makes the master key: say so, and that it needs a backup, whichever command it was."""
    if keys.generated:
        say(f"master key: {keys.source}")
        say(
            "A new master key was generated. Back up that file: without it nobody, you included, "
            "can decrypt the stored secrets."
        )


def _serve(args: argparse.Namespace) -> int:
    settings = _prepared(args)
    # Imported only here: the SDK and the web stack take most of a start, and no other command needs them.
    from mcp_secrets.serving import check_settings, run_server  # noqa: PLC0415

    check_settings(settings)
    store = open_configured_store(settings, create=True)
    store.ping()
    secrets, keys = build_secrets(settings, store, generate_key=True)
    # Said at once: a start that fails later (the port in use) would hide it for good.
    _say_if_generated(keys)
    try:
        run_server(settings, store, secrets, keys, lambda: _close(store, secrets))
    finally:
        _close(store, secrets)
    return 0


def _read_value(prompt: str) -> str:
    """The value from a hidden prompt, or from stdin when it is not a terminal; never from argv.

    Piped, the value is all of stdin, as bytes (a PEM key or a JSON credential keeps its lines and
    its carriage returns), less one final line end, which ``echo`` and editors add.
    """
    if sys.stdin.isatty():
        if sys.platform == "win32":
            return _getpass(prompt)
        raw = _read_hidden_line(prompt)
    else:
        try:
            raw = sys.stdin.buffer.read(MAX_VALUE_BYTES + len(b"\r\n") + 1)  # enough to tell a value too long
        except OSError as exc:  # an I/O error (Python refuses a directory as stdin before this runs)
            raise InvalidInputError(f"no value: stdin cannot be read ({exc.strerror})") from None
        raw = raw.removesuffix(b"\n").removesuffix(b"\r") if raw.endswith(b"\n") else raw
    if len(raw) > MAX_VALUE_BYTES:
        raise InvalidInputError(f"value must be at most {MAX_VALUE_BYTES} bytes in UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass  # refused out of this block: the codec's error holds the value's bytes
    raise InvalidInputError("value must be UTF-8 text")


def _getpass(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:  # Ctrl-D at the prompt
        say()  # getpass ends the prompt's line only when it reads one
        raise InvalidInputError("no value was entered (the input ended at the prompt)") from None
    except UnicodeDecodeError:  # the terminal's bytes, decoded strictly: refused as piped ones are
        say()  # and out of this block: the codec's error holds the bytes typed
    raise InvalidInputError("value must be UTF-8 text")


if sys.platform != "win32":
    import termios

    TERMINAL_LINE_BYTES = 4095  # what Linux keeps of a line typed at a terminal, dropping the rest silently
    PASTE_TENTHS = 1  # how long, in tenths of a second, the rest of a paste may take to follow its first line

    def _read_hidden_line(prompt: str) -> bytes:
        """One line typed at the terminal with echo off, less its line end; refused if it may be cut short.

        getpass kept the first line of a pasted PEM key and discarded the rest, and a line past the
        terminal's limit lost its end: either was stored, cut short, as if it were the whole value.
        """
        try:
            tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        except OSError:  # no controlling terminal after all: getpass warns, and reads stdin
            return _getpass(prompt).encode("utf-8", "surrogateescape")
        try:
            shown = termios.tcgetattr(tty)
            hidden = [*shown[:3], shown[3] & ~termios.ECHO, *shown[4:6], list(shown[6])]
            termios.tcsetattr(tty, termios.TCSAFLUSH, hidden)
            try:
                os.write(tty, prompt.encode())
                line = b""
                while not line.endswith(b"\n"):
                    chunk = os.read(tty, MAX_VALUE_BYTES)
                    if not chunk:  # Ctrl-D
                        break
                    line += chunk
                # Whatever follows the line within a moment (a paste's next lines, ended or not) is
                # readable once the terminal stops waiting for whole lines.
                hidden[3] &= ~termios.ICANON
                hidden[6][termios.VMIN], hidden[6][termios.VTIME] = 0, PASTE_TENTHS
                termios.tcsetattr(tty, termios.TCSANOW, hidden)
                more = bool(line) and bool(os.read(tty, 1))
            finally:
                # Flushing: what is left of a paste must not reach the shell, echoed and run as commands.
                termios.tcsetattr(tty, termios.TCSAFLUSH, shown)
                os.write(tty, b"\n")
        finally:
            os.close(tty)
        if not line:
            raise InvalidInputError("no value was entered (the input ended at the prompt)")
        if more:
            raise InvalidInputError(
                "the value is more than one line, which a prompt reads only the first of: pipe it on stdin"
            )
        line = line.removesuffix(b"\n")
        if len(line) >= TERMINAL_LINE_BYTES:
            raise InvalidInputError(
                f"a value of {TERMINAL_LINE_BYTES} bytes or more may be cut short by the terminal: "
                "pipe it on stdin"
            )
        return line


@contextmanager
def _users_secrets(args: argparse.Namespace, *, writes_values: bool = False) -> Iterator[tuple[Secrets, str]]:
    """The service over the configured store, and the user a command acts for (``--user``); closed after.

    Only a command that ``writes_values`` loads the master key (and makes it, and the store, on a first
    run); the others never read one, so they work without it, a lost one included.
    """
    # Checked before any key or store; an empty --user (`--user "$TARGET"` unset) is refused, not one's own.
    username = None if args.user is None else validate_username(args.user)
    settings = _prepared(args, needs_key=writes_values)
    refuse_keys_set_twice(settings)  # unread here, but a key set twice is a mistake to say at once
    username = username or validate_username(local_username(settings.user))
    store = open_configured_store(settings, create=writes_values)
    secrets = None
    try:
        if writes_values:
            secrets, keys = build_secrets(settings, store, generate_key=True)
            _say_if_generated(keys)
        else:
            secrets = keyless_secrets(settings, store)
        yield secrets, username
    finally:
        _close(store, secrets)


def _set(args: argparse.Namespace) -> int:
    # The names first: nobody should type a value, or get a new master key, only to see a name refused.
    validate_name("server", args.server)
    validate_name("key", args.key)
    if sys.stdin is None:  # started with stdin closed (`<&-`): Python has no stdin to read, nor a terminal
        raise InvalidInputError("no value: stdin is closed; pipe the value in, or run this at a terminal")
    with _users_secrets(args, writes_values=True) as (secrets, username):
        value = _read_value(f"Value of {args.key} for {args.server} (hidden): ")
        result = secrets.set_secret(username, args.server, args.key, value, via="cli")
    say(f"Secret {result.key} for server {result.server} {result.status} for {username}.")
    return 0


def _delete(args: argparse.Namespace) -> int:
    validate_name("server", args.server)  # a mistyped name is told as such, wherever the store is
    validate_name("key", args.key)
    with _users_secrets(args) as (secrets, username):
        try:
            result = secrets.delete_secret(username, args.server, args.key, via="cli")
        except SecretNotFoundError as exc:  # the library's message does not say whose secrets it looked at
            listing = f"mcp-secrets list --user {shlex.quote(username)}"  # quoted: a username may hold '|'
            raise SecretNotFoundError(
                f"{exc} of {username}; nothing deleted (`{listing}` shows them)"
            ) from None
    say(f"Secret {result.key} for server {result.server} deleted for {username}.")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.server:
        validate_name("server", args.server)
    with _users_secrets(args) as (secrets, username):
        # An empty server means every server (`--server "$SERVER"` unset), as for the tools and REST.
        infos = secrets.list_secret_keys(username, args.server or None)
    if args.json:
        write_out(printable_json(_key_json(username, info)) for info in infos)
        return 0
    print_table(
        ("SERVER", "KEY", "CREATED (UTC)", "UPDATED (UTC)", "LAST USED (UTC)"),
        [
            (
                info.server,
                info.key,
                f"{info.created_at:%Y-%m-%d %H:%M}",
                f"{info.updated_at:%Y-%m-%d %H:%M}",
                f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "never",
            )
            for info in infos
        ],
    )
    if not infos:
        say(f"No secrets stored for {username}" + (f" for server {args.server}." if args.server else "."))
    return 0


def _key_json(username: str, info: SecretKeyInfo) -> dict[str, str | None]:
    """One secret's names and times as ``list --json`` prints them, in ISO 8601 as ``audit --json``."""
    used = info.last_used_at
    return {
        "username": username,
        "server": info.server,
        "key": info.key,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "last_used_at": None if used is None else used.isoformat(),
    }


def _rotate(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    secrets = None
    only_legacy = args.command == "migrate-legacy"
    try:
        # rotate names each record under a key not configured; migrate-legacy passes them over, and would
        # re-encrypt the legacy records under a wrong key without a word.
        secrets, keys = build_secrets(settings, store, check_key_ids=only_legacy)
        if only_legacy and not secrets.encryptor.reads_legacy:
            return _find_unreadable_legacy(secrets, args.batch_size)
        with terminated_as_an_exception(), progress_bar() as progress:
            report = rotate(
                secrets,
                only_legacy=only_legacy,
                dry_run=args.dry_run,
                batch_size=args.batch_size,
                on_progress=progress,
                uninterrupted=stop_signals_held,
            )
    finally:
        _close(store, secrets)
    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    what = "legacy records" if only_legacy else "records"
    say(
        f"{_scanned(report.scanned)}; {verb} {report.rewrapped} {what} to key {report.active_key_id} "
        f"({keys.source}); {report.already_current} left as they were; "
        f"{report.changed_meanwhile} changed meanwhile; {len(report.failed)} failed."
    )
    _say_failures(report)
    _say_unreadable(report)
    return EXIT_ERROR if report.failed else 0


def _verify(args: argparse.Namespace) -> int:
    settings, store = _open(args)
    secrets = None
    try:
        secrets, keys = build_secrets(settings, store, check_key_ids=False)  # it counts every record's key
        active = secrets.encryptor.active_key_id
        with terminated_as_an_exception(), progress_bar() as progress:
            report = verify(
                secrets, batch_size=args.batch_size, on_progress=progress, uninterrupted=stop_signals_held
            )
    finally:
        _close(store, secrets)
    # The active key first, then the others that rotate would re-encrypt, the legacy key last.
    order = sorted(report.readable, key=lambda key_id: (key_id != active, key_id == LEGACY_KEY_ID, key_id))
    under = ", ".join(f"{report.readable[key_id]} under {_key_named(key_id, active)}" for key_id in order)
    decrypting = report.readable.total()
    readable = f"{decrypting} {_for_count(decrypting, 'decrypts', 'decrypt')}"
    if under:
        readable += f" ({under})"
    failed = len(report.failed)
    say(f"{_scanned(report.scanned)}; {readable}; {failed} {_for_count(failed, 'does not', 'do not')}.")
    _say_records("does not decrypt", report.failed)
    if report.failed and not report.readable:
        say(f"None decrypts: are these the master keys this store was written with ({keys.source})?")
    return EXIT_ERROR if report.failed else 0


def _scanned(count: int) -> str:
    return f"{count} {_for_count(count, 'record', 'records')} scanned"


def _for_count(count: int, one: str, other: str) -> str:
    """``one`` (a singular form) for a count of 1, else ``other``."""
    return one if count == 1 else other


def _key_named(key_id: str, active: str) -> str:
    if key_id == LEGACY_KEY_ID:
        return "the legacy key"
    return f"key {key_id} (active)" if key_id == active else f"key {key_id}"


def _find_unreadable_legacy(secrets: Secrets, batch_size: int) -> int:
    """``migrate-legacy`` without the legacy key: say it is needed, name each legacy record left unread."""
    say(
        "MCP_SECRETS_LEGACY_KEY is not set: records of the original iv:authTag:ciphertext format cannot "
        "be read without it, so none can be migrated. Set it to the original key string to migrate them."
    )
    # A dry run changes nothing: it counts each legacy record as a failure for want of the key.
    with progress_bar() as progress:
        report = rotate(secrets, only_legacy=True, dry_run=True, batch_size=batch_size, on_progress=progress)
    if not report.failed:
        say(f"{_scanned(report.scanned)}; none is in the legacy format: nothing to migrate.")
        _say_unreadable(report)
        return 0
    say(
        f"{_scanned(report.scanned)}; {len(report.failed)} in the legacy format cannot be read; "
        "none re-encrypted."
    )
    _say_failures(report)
    _say_unreadable(report)
    return EXIT_ERROR


def _say_failures(report: RotationReport) -> None:
    _say_records("failed", report.failed)


def _say_unreadable(report: RotationReport) -> None:
    """``migrate-legacy``: the records in no format it knows, neither migrated nor counted as legacy."""
    if report.unreadable:
        say(
            f"{len(report.unreadable)} records are in neither the legacy nor the current format, so not "
            "migrated and left as they are: correct or remove them (README, Storage)."
        )
        _say_records("unreadable", report.unreadable)


def _say_records(label: str, failures: list[RecordFailure]) -> None:
    for failure in failures:
        # Escaped as audit's cells are: records older than today's validation may have any names.
        user, server, key, reason = map(
            printable, (failure.username, failure.server, failure.key, failure.reason)
        )
        say(f"  {label}: user {user}, server {server}, key {key}: {reason}")


def _audit(args: argparse.Namespace) -> int:
    store = _open(args, needs_key=False)[1]  # the trail holds no ciphertexts: no key needed
    try:
        # "" is every user and every server, as an option not given (`--user "$AUDITED"` unset).
        # Printed as read, a page at a time: a million events held at once took 750 MB.
        events = store.iter_events(args.user or None, args.server or None, args.limit, page=AUDIT_PAGE)
        if args.json:
            write_out(event.to_json() for event in events)
            return 0
        print_table(
            ("TIME (UTC)", "USER", "ACTION", "SERVER", "KEY", "VIA", "DETAIL"),
            (
                (f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.server, e.key, e.transport, e.detail)
                for e in events
            ),
            block=AUDIT_PAGE,
        )
    finally:
        store.close()
    return 0


def _prune_audit(args: argparse.Namespace) -> int:
    store = _open(args, needs_key=False)[1]  # events only: no key needed
    try:
        # A dry run writes nothing: it neither creates the export file nor waits on another run's lock.
        exporting = args.export is not None and not args.dry_run
        with (
            terminated_as_an_exception(),
            archive_file(args.export) if exporting else nullcontext() as keep,
            progress_bar("events") as progress,
        ):
            report = prune_events(
                store,
                timedelta(days=args.older_than),
                dry_run=args.dry_run,
                batch_size=args.batch_size,
                via="cli",
                keep=keep,
                on_progress=progress,
                uninterrupted=stop_signals_held,
            )
    finally:
        store.close()
    cutoff = f"{report.before:%Y-%m-%d %H:%M:%S} UTC"
    if args.dry_run:
        say(f"{report.found} audit events happened before {cutoff}; none deleted (dry run).")
    else:
        archived = f", each written to {args.export} first" if args.export else ""
        say(f"{report.deleted} audit events from before {cutoff} deleted{archived}; the prune is recorded.")
    return 0


def _keygen(_: argparse.Namespace) -> int:
    write_out([generate_master_key()])
    say(
        "Keep this key safe and out of the database: set MCP_SECRETS_MASTER_KEY, or put it in a 0600 file "
        "named by MCP_SECRETS_MASTER_KEY_FILE."
    )
    return 0


def _prepared(args: argparse.Namespace, *, needs_key: bool = True) -> Settings:
    """The settings (command line over environment), with logging set up."""
    settings = _settings(args)
    configure_logging(settings.log_level)
    if needs_key:
        require_explicit_key(settings)  # before connecting, so a missing key fails fast
    return settings


def _open(
    args: argparse.Namespace, *, needs_key: bool = True, create: bool = False
) -> tuple[Settings, SecretStore]:
    """The settings and the store opened.

    Only the commands that store something (``create``) make a SQLite file that does not exist yet.
    """
    settings = _prepared(args, needs_key=needs_key)
    return settings, open_configured_store(settings, create=create)


def _close(store: SecretStore, secrets: Secrets | None) -> None:
    """Close the store, once the Secrets service over it (if any) has written the uses it still holds."""
    if secrets is not None:
        secrets.close()
    store.close()


def _token_store(args: argparse.Namespace, *, create: bool = False) -> SecretStore:
    # Tokens are hashed, not encrypted: these commands work without the master key.
    return _open(args, needs_key=False, create=create)[1]


def _token_create(args: argparse.Namespace) -> int:
    expires = None if args.expires_days is None else timedelta(days=args.expires_days)
    validate_username(args.username)  # before a store is made for it
    tokens = ApiTokens(_token_store(args, create=True))
    new = tokens.create(args.username, label=args.label, expires_in=expires)
    try:
        write_out([new.token])  # never shown again: an error if it did not reach stdout
    except UnwritableOutput:  # nobody has it, and it cannot be shown again: it must not stay live
        tokens.revoke(new.record.token_id)
        say(f"Token {new.record.token_id} for {new.record.username} was revoked: it could not be shown.")
        raise
    say(f"Token {new.record.token_id} for {new.record.username} created. It is shown only this once.")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    records = ApiTokens(_token_store(args)).list(args.user)
    now = datetime.now(timezone.utc)
    rows = []
    for record in records:
        expires = f"{record.expires_at:%Y-%m-%d %H:%M}" if record.expires_at else "never"
        if record.revoked_at:
            status = "revoked"
        elif record.expires_at is not None and record.expires_at <= now:
            status = "expired"
        else:
            status = "live"
        created = f"{record.created_at:%Y-%m-%d %H:%M}"
        rows.append((record.token_id, record.username, created, expires, status, record.label))
    print_table(("ID", "USERNAME", "CREATED (UTC)", "EXPIRES (UTC)", "STATUS", "LABEL"), rows)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    record = ApiTokens(_token_store(args)).revoke(args.token_id)
    say(f"Token {record.token_id} of {printable(record.username)} revoked.")  # stored: may be any text
    return 0


def _bounded(text: str, most: int) -> int:
    try:
        number = int(text)
    except ValueError:  # argparse's own message would name this module's converter, not the rule
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1 and at most {most}") from None
    # Past the bound a number became a traceback: too large for SQLite, C, or a date.
    if not 1 <= number <= most:
        raise argparse.ArgumentTypeError(f"must be at least 1 and at most {most}")
    return number


def _positive(text: str) -> int:
    return _bounded(text, MAX_COUNT)


def _prune_batch_size(text: str) -> int:
    return _bounded(text, MAX_PRUNE_BATCH_SIZE)


def _retention_days(text: str) -> int:
    return _bounded(text, MAX_RETENTION_DAYS)


def _export_path(text: str) -> str:
    # `--export "$ARCHIVE"` with the variable unset would otherwise prune without archiving anything.
    if not text.strip():
        raise argparse.ArgumentTypeError("needs the path of a file")
    return text


def _days(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TOKEN_DAYS} (days)") from None
    # `not >` refuses NaN too; the bound keeps the expiry a date (infinity was a traceback).
    if not 0 < number <= MAX_TOKEN_DAYS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TOKEN_DAYS} (days)")
    return number


# argparse's error for `-hTEXT` or `--help=TEXT`, which quotes TEXT.
_EXPLICIT_ARGUMENT = re.compile(r"ignored explicit argument .*", re.DOTALL)


class _Parser(argparse.ArgumentParser):
    """argparse, except that its errors never quote what was typed after an option that takes no value.

    ``set SERVER KEY -hVALUE``, a value typed in the wrong place, would otherwise reach stderr.
    Every command's parser is one of these: argparse makes subparsers of their parent's class.
    """

    def error(self, message: str) -> NoReturn:
        super().error(_EXPLICIT_ARGUMENT.sub("takes no value (what followed it is not repeated)", message))


def _command(commands: argparse._SubParsersAction[_Parser], name: str, text: str) -> _Parser:
    """A command that ``text`` describes in the overview and atop its own ``--help``."""
    return commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")


def _add_secret_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``set``, ``delete`` and ``list``: one user's secrets, by name; no value ever on the command line."""
    one_secret: tuple[tuple[str, str, Callable[[argparse.Namespace], int]], ...] = (
        (
            "set",
            "store a secret typed at a hidden prompt (or read from stdin), never from the command line",
            _set,
        ),
        ("delete", "delete one secret of one user (recorded in the audit trail)", _delete),
    )
    for name, text, handler in one_secret:
        command = _command(commands, name, text)
        command.add_argument("server", metavar="SERVER", help="the MCP server the secret is for")
        command.add_argument("key", metavar="KEY", help="the secret's name")
        command.add_argument(
            "--user", metavar="USERNAME", help="whose secret (default MCP_SECRETS_USER or your login name)"
        )
        command.set_defaults(handler=handler)

    lister = _command(commands, "list", "list one user's secrets: names and times, never values")
    lister.add_argument(
        "--user", metavar="USERNAME", help="whose secrets (default MCP_SECRETS_USER or your login name)"
    )
    lister.add_argument("--server", help="only this MCP server's secrets")
    lister.add_argument("--json", action="store_true", help="one JSON object per line, to ship elsewhere")
    lister.set_defaults(handler=_list)


def _add_audit_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``audit`` and ``prune-audit``: reading the trail, and keeping it to a retention period."""
    audit = _command(commands, "audit", "print the audit trail of every user (newest first; never values)")
    audit.add_argument("--user", metavar="USERNAME", help="only this user's events")
    audit.add_argument("--server", help="only this MCP server's events")
    audit.add_argument(
        "--limit", metavar="N", type=_positive, default=100, help="how many events (default 100)"
    )
    audit.add_argument("--json", action="store_true", help="one JSON object per line, to ship elsewhere")
    audit.set_defaults(handler=_audit)

    prune = _command(
        commands, "prune-audit", "delete the audit events older than a number of days, of every user"
    )
    prune.add_argument(
        "--older-than",
        metavar="DAYS",
        type=_retention_days,
        required=True,
        help=f"keep the last DAYS days (at most {MAX_RETENTION_DAYS})",
    )
    prune.add_argument(
        "--export",
        metavar="FILE",
        type=_export_path,
        help="append each event to FILE (JSON lines) before deleting it",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    prune.add_argument(
        "--batch-size",
        metavar="N",
        type=_prune_batch_size,
        default=PRUNE_BATCH_SIZE,
        help=f"events deleted per transaction (default {PRUNE_BATCH_SIZE}, at most {MAX_PRUNE_BATCH_SIZE})",
    )
    prune.set_defaults(handler=_prune_audit)


def _add_batch_size(command: _Parser) -> None:
    command.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"records read per batch (default {DEFAULT_BATCH_SIZE})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for ``main`` and for ``--help`` tests."""
    parser = _Parser(
        prog="mcp-secrets",
        description="Per-user encrypted secrets for MCP servers, served over MCP.",
        epilog=(
            "Settings come from MCP_SECRETS_* environment variables (the master key, the database URL, …); "
            "`serve` options override them. `mcp-secrets COMMAND --help` describes each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", "run the MCP server (stdio by default)")
    # The environment sets each default, and the options override it (README, Configuration).
    serve.add_argument(
        "--transport",
        choices=["stdio", "sse", "streamable-http"],
        help="the transport (default MCP_SECRETS_TRANSPORT, else stdio)",
    )
    serve.add_argument(
        "--host", help="address to bind for HTTP transports (default MCP_SECRETS_HOST, else 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, help="port for HTTP transports (default MCP_SECRETS_PORT, else 8000)"
    )
    serve.add_argument(
        "--stateless",
        dest="stateless_http",
        action="store_const",
        const=True,
        help=(
            "Streamable HTTP without sessions, so replicas can share one MongoDB behind a load balancer "
            "(default MCP_SECRETS_STATELESS_HTTP, else off)"
        ),
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="URL clients use to reach this server, when behind a proxy (default MCP_SECRETS_PUBLIC_URL)",
    )
    serve.add_argument(
        "--servers",
        metavar="FILE",
        help=(
            'gateway: downstream MCP servers ({"mcpServers": …}) to offer with each caller\'s secrets '
            "(default MCP_SECRETS_SERVERS)"
        ),
    )
    serve.add_argument(
        "--jwks-url",
        metavar="URL",
        help="also accept JWTs signed by a key of this OIDC provider's JWKS (default MCP_SECRETS_JWKS_URL)",
    )
    serve.add_argument("--issuer", help="required `iss` of accepted JWTs (default MCP_SECRETS_ISSUER)")
    serve.add_argument("--audience", help="required `aud` of accepted JWTs (default MCP_SECRETS_AUDIENCE)")
    serve.add_argument(
        "--username-claim",
        metavar="CLAIM",
        help="JWT claim holding the username (default MCP_SECRETS_USERNAME_CLAIM, else sub)",
    )
    serve.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help=(
            "how much to log to stderr: DEBUG, INFO, WARNING, ERROR or CRITICAL "
            "(default MCP_SECRETS_LOG_LEVEL, else INFO)"
        ),
    )
    serve.set_defaults(handler=_serve)

    _add_secret_commands(commands)

    for name, text in (
        ("rotate", "re-encrypt every record to the active (first) master key, online and resumable"),
        (
            "migrate-legacy",
            (
                "re-encrypt records of the original iv:authTag:ciphertext format to the current one "
                "(needs MCP_SECRETS_LEGACY_KEY)"
            ),
        ),
    ):
        rewrap = _command(commands, name, text)
        rewrap.add_argument("--dry-run", action="store_true", help="only count what would change")
        _add_batch_size(rewrap)
        rewrap.set_defaults(handler=_rotate)
    check = _command(
        commands,
        "verify",
        "decrypt every record with the configured master keys and name any that does not, changing nothing",
    )
    _add_batch_size(check)
    check.set_defaults(handler=_verify)

    _add_audit_commands(commands)

    keygen = _command(commands, "keygen", "print a fresh master key")
    keygen.set_defaults(handler=_keygen)

    token = _command(commands, "token", "create, list and revoke API tokens for the HTTP transports")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = _command(token_commands, "create", "make a token for USERNAME and print it once")
    create.add_argument("username", metavar="USERNAME", help="whose token: the user it acts as")
    create.add_argument(
        "--label", metavar="TEXT", default="", help="a note to tell tokens apart in `token list`"
    )
    create.add_argument(
        "--expires-days",
        type=_days,
        metavar="DAYS",
        help=f"the token stops working after DAYS days: more than 0 (0.5 is 12 hours), "
        f"at most {MAX_TOKEN_DAYS}; without it, never",
    )
    create.set_defaults(handler=_token_create)
    listing = _command(token_commands, "list", "list tokens (ids, owners, status; never the tokens)")
    listing.add_argument("--user", metavar="USERNAME", help="only this user's tokens")
    listing.set_defaults(handler=_token_list)
    revoke = _command(token_commands, "revoke", "revoke a token by its id, or by the whole token")
    revoke.add_argument(
        "token_id", metavar="ID", help="the token's id (as `token list` shows it), or the whole token"
    )
    revoke.set_defaults(handler=_token_revoke)
    return parser


def _is_text(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parsed(parser: argparse.ArgumentParser, arguments: list[str]) -> argparse.Namespace:
    """The command line's arguments; a usage error (exit 2) that repeats no value typed in it."""
    # Python 3.13's argparse reads -hVALUE as a request for help, earlier ones as an error: it is an
    # error on each, so that a value typed there is refused the same way everywhere.
    for argument in itertools.takewhile(lambda argument: argument != "--", arguments):
        if (argument.startswith("-h") and argument != "-h") or argument.startswith("--help="):
            parser.error("argument -h/--help: takes no value (what followed it is not repeated)")
    args, unrecognized = parser.parse_known_args(arguments)
    if not all(_is_text(arg) for arg in arguments):
        # Bytes that are not UTF-8 arrive as lone surrogates, which no store or terminal can take.
        parser.error("an argument is not valid UTF-8 text (not repeated here)")
    if unrecognized and args.command == "set":
        # argparse would repeat them, and a value typed after SERVER KEY would reach stderr and its logs.
        parser.error(
            "unrecognized arguments (not repeated here): set takes only SERVER, KEY and --user, "
            "and reads the value at a hidden prompt or from stdin, never from the command line"
        )
    if unrecognized:
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    return args


def _discard_stdout() -> None:
    """Point stdout at nothing, so that the flush at exit does not fail again with a traceback."""
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; print errors as one line on stderr and return the exit code."""
    forbid_inspection()  # before any key or value is read: this process will hold them
    args = _parsed(build_parser(), sys.argv[1:] if argv is None else list(argv))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt as stop:
        return 128 + stop.number if isinstance(stop, Terminated) else 130
    except UnwritableOutput as unwritable:
        # A reader that stopped early (`| head`) ends it quietly; a full disk, an I/O error or a closed
        # stdout is said in one line; neither with a traceback.
        _discard_stdout()
        exc = unwritable.error
        if not isinstance(exc, BrokenPipeError):
            say(f"mcp-secrets: error: the output could not be written: {exc.strerror or exc}")
        return EXIT_ERROR
    except (ConfigurationError, InvalidInputError) as exc:
        say(f"mcp-secrets: error: {exc}")
        return EXIT_CONFIGURATION
    except StoreUnavailableError as exc:
        say(f"mcp-secrets: error: {exc}")
        return EXIT_ERROR
    except SecretsError as exc:
        say(f"mcp-secrets: error: {exc}")
        return EXIT_ERROR
