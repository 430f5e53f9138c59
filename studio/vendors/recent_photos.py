"""A few photos prepared for sending, kept briefly so a batch prepares each photo once.

A batch that runs many jobs on one photo (say ten styles) would otherwise
decode, resize and JPEG-encode the same photo for every job in every worker.
Photos are personal data, so what is kept here is deliberately little and
short-lived: at most a few entries, each for a minute, in this process's
memory only (never a shared cache, never disk). Entries are keyed by a hash
of the photo's bytes plus everything the preparation depends on, so a changed
photo or limit never meets an old result, and failures are not kept at all.
An expired entry goes at the next use of the cache.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class RecentlyPrepared(Generic[T]):
    def __init__(self, *, entries: int = 4, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.entries = entries
        self.ttl = ttl
        self.clock = clock
        self._items: OrderedDict[tuple, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()  # worker threads share the process's cache

    def get_or_make(self, photo: bytes, limits: Hashable, make: Callable[[], T], *, ttl: float | None = None) -> T:
        """What `make()` returns for this photo and these limits, made at most once a minute
        (or once per `ttl` seconds, if given; 0 makes it every time and keeps nothing)."""
        ttl = self.ttl if ttl is None else ttl
        if ttl <= 0:
            return make()
        key = (hashlib.sha256(photo).digest(), limits)
        with self._lock:
            self._drop_expired()
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found[1]
        # Made outside the lock: two threads may both make one photo, never wait on each other.
        value = make()
        with self._lock:
            self._items[key] = (self.clock() + ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return value

    def forget(self, photo: bytes, limits: Hashable) -> None:
        """Drop what was made for this photo and these limits (it turned out unusable)."""
        with self._lock:
            self._items.pop((hashlib.sha256(photo).digest(), limits), None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired()
            return len(self._items)

    def _drop_expired(self) -> None:
        now = self.clock()
        for key in [key for key, (expires, _) in self._items.items() if expires <= now]:
            del self._items[key]
