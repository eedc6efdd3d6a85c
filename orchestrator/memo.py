"""A memo for costly, pure builders whose results their callers change in place.

Each answer is kept under a key the caller builds from everything it was made of (the text of
the files read, the arguments), so the same inputs give the same answer and changed ones a new
one. Every caller gets its own deep copy, so one caller changing its config cannot change
another's. Past `size` answers, the oldest goes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Memo(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: dict[str, T] = {}

    def get(self, key: str, make: Callable[[], T]) -> T:
        """A copy of the answer kept under `key`, made by `make()` the first time (an error
        it raises is not kept: the next call tries again)."""
        if key not in self._kept:
            self._kept[key] = make()
            if len(self._kept) > self.size:
                del self._kept[next(iter(self._kept))]  # the oldest
        return copy.deepcopy(self._kept[key])

    def clear(self) -> None:
        self._kept.clear()
