"""Let mongomock take pymongo's ``UpdateOne`` in a bulk write, as a real server does.

Since pymongo 4.11 an ``UpdateOne`` hands its bulk a ``sort`` (None unless given), which mongomock 4.3's
``add_update`` does not accept. The store never sorts an update; a test that did would be refused here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import mongomock.collection


def _without_sort(add_update: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(add_update)
    def call(*args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort the document an update picks")
        return add_update(*args, **kwargs)

    call.__takes_sort__ = True  # type: ignore[attr-defined]
    return call


def install() -> None:
    """Patch mongomock's bulk builder; calling it twice changes nothing."""
    builder = mongomock.collection.BulkOperationBuilder
    if not getattr(builder.add_update, "__takes_sort__", False):
        builder.add_update = _without_sort(builder.add_update)  # type: ignore[method-assign]
