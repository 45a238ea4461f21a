"""Make mongomock as thread-safe as pymongo, which the MongoDB store relies on.

The store is shared between the caller and the background use recorder, so a read and a
``last_used_at`` update can run at once. A real server isolates them; mongomock copies and
mutates the same in-memory dicts and can fail with "OrderedDict mutated during iteration".
One lock around every collection operation, and around a cursor materialising its results
(after which it holds copies), gives it the isolation the real driver has.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import mongomock.collection

_LOCK = threading.RLock()

_COLLECTION_OPERATIONS = (
    "insert_one",
    "insert_many",
    "update_one",
    "update_many",
    "replace_one",
    "find_one",
    "find_one_and_delete",
    "find_one_and_replace",
    "find_one_and_update",
    "delete_one",
    "delete_many",
    "count_documents",
    "estimated_document_count",
    "distinct",
    "aggregate",
    "bulk_write",
    "create_index",
    "create_indexes",
    "drop_index",
    "drop_indexes",
    "list_indexes",
    "index_information",
    "drop",
)


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    call.__mongomock_locked__ = True  # type: ignore[attr-defined]
    return call


def install() -> None:
    """Serialise mongomock's operations process-wide; calling it twice changes nothing."""
    targets = [(mongomock.collection.Collection, name) for name in _COLLECTION_OPERATIONS]
    targets.append((mongomock.collection.Cursor, "_compute_results"))
    for owner, name in targets:
        method = getattr(owner, name)
        if not getattr(method, "__mongomock_locked__", False):
            setattr(owner, name, _locked(method))
