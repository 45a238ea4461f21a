"""What other users may do with a file that holds the master key or the store, by its POSIX mode."""

from __future__ import annotations

import os
import stat


def others_may_write(mode: int) -> bool:
    """Whether the group or others may write a file of ``mode`` (never on a system without POSIX modes)."""
    return os.name == "posix" and bool(stat.S_IMODE(mode) & 0o022)


def others_may_read(mode: int) -> bool:
    """Whether the group or others have any access to a file of ``mode`` (never without POSIX modes)."""
    return os.name == "posix" and bool(stat.S_IMODE(mode) & 0o077)
