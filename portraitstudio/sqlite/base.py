"""Django's SQLite backend, with the threads of one process queueing for the write lock here.

SQLite lets one writer at a time into a database file. A writer that finds it
locked waits in SQLite's busy handler, which sleeps in growing steps (1, 2,
5, ... 100 ms) between looks: with the step runner's dozens of threads each
writing short transactions, the threads spent much of a burst asleep there
while the lock stood free (bench/vendor_wait.py). So a thread takes a lock of
its process before it writes, and gives it up the moment its write commits:
the next thread of the process gets it at once. Between processes SQLite's own
lock and busy handler decide, as before.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def _lock_of(database: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(database, threading.RLock())


def _writes(query: str) -> bool:
    return query.lstrip()[:7].upper().startswith(_WRITES)


class LockingCursor(base.SQLiteCursorWrapper):
    """A statement that writes outside a transaction is one of its own: it takes the lock for itself."""

    wrapper: DatabaseWrapper

    def execute(self, query, params=None):
        with self.wrapper.lock_for(query):
            return super().execute(query, params)

    def executemany(self, query, param_list):
        with self.wrapper.lock_for(query):
            return super().executemany(query, param_list)


class DatabaseWrapper(base.DatabaseWrapper):
    holds_write_lock = False

    def _lock(self) -> threading.RLock:
        return _lock_of(str(self.settings_dict["NAME"]))

    def _take_write_lock(self) -> None:
        # As long as SQLite itself would wait before "database is locked".
        if not self._lock().acquire(timeout=float(self.settings_dict["OPTIONS"].get("timeout", 5))):
            raise OperationalError("database is locked")

    @contextmanager
    def _write_lock(self):
        self._take_write_lock()
        try:
            yield
        finally:
            self._lock().release()

    def lock_for(self, query: str):
        """The process's write lock for a statement that writes on its own; nothing otherwise."""
        return nullcontext() if self.holds_write_lock or not _writes(query) else self._write_lock()

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=LockingCursor)
        cursor.wrapper = self
        return cursor

    # A transaction (BEGIN IMMEDIATE: it takes SQLite's write lock at once) holds the lock to its end.

    def _start_transaction_under_autocommit(self):
        self._take_write_lock()
        self.holds_write_lock = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._end_of_transaction()
            raise

    def _end_of_transaction(self) -> None:
        if self.holds_write_lock:
            self.holds_write_lock = False
            self._lock().release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._end_of_transaction()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._end_of_transaction()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._end_of_transaction()
