"""What other users may do with a file that holds the master key or the store: by its mode and its owners."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def others_may_write(mode: int) -> bool:
    """Whether the group or others may write a file of ``mode`` (never on a system without POSIX modes)."""
    return os.name == "posix" and bool(stat.S_IMODE(mode) & 0o022)


def others_may_read(mode: int) -> bool:
    """Whether the group or others have any access to a file of ``mode`` (never without POSIX modes)."""
    return os.name == "posix" and bool(stat.S_IMODE(mode) & 0o077)


def owned_elsewhere(path: Path) -> str | None:
    """Where another user may change ``path`` whatever its mode, as a warning's words; None when nowhere.

    The owner of a file may rewrite it, and the owner of a directory above it may put another file in its
    place. Owners other than this process's user and root are named: a service account reading a key root
    keeps is as it should be. Checked on the real path, its links followed, and on the directories of the
    path as given: the owner of one holding a link can point it elsewhere.
    """
    if os.name != "posix":
        return None
    trusted = {0, os.geteuid()}
    real = path.resolve()
    for each in dict.fromkeys((real, *real.parents, *path.absolute().parents)):
        try:
            owner = each.stat().st_uid
        except OSError:  # not there (yet), or not searchable: nothing to say of it
            continue
        if owner not in trusted:
            where = "is" if each == real else f"is in {each},"
            return f"{where} owned by another user ({_user_name(owner)})"
    return None


def _user_name(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - POSIX only

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:  # a user with no name on this system
        return f"uid {uid}"
