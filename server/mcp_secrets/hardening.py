"""Keep other processes of the same OS user out of this one: its memory holds keys and values.

A process's environment (``/proc/<pid>/environ``, where ``MCP_SECRETS_MASTER_KEY``
may be) and its memory (``ptrace``, ``/proc/<pid>/mem``, a core dump) are open to
every process of the same user, a downstream server the gateway started among
them. Marking the process not dumpable, as ssh-agent and gpg-agent do, closes
them to all but root. It does not close the files that user can read (the key
file, the database): a process run as that user is trusted with them.
"""

from __future__ import annotations

import ctypes
import sys

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def forbid_inspection() -> bool:
    """Mark this process not dumpable (Linux); True when it is. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 and is_inspectable() is False
    except (OSError, AttributeError):  # no C library to load, or one without prctl
        return False


def is_inspectable() -> bool | None:
    """Whether this process is dumpable (Linux); None where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        state = ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        return None
    return state != 0 if state >= 0 else None
