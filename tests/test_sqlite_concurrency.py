"""SQLite as configured (WAL + IMMEDIATE, portraitstudio/sqlite) takes several writer processes
with several writer threads each.

Each thread runs read-then-write transactions on one counter. With SQLite's
default DEFERRED transactions some of them fail at once with "database is
locked" (the read lock cannot be upgraded); with IMMEDIATE they wait their
turn, the threads of one process on the process's write lock.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, transaction

ROOT = Path(__file__).resolve().parent.parent

# The worker processes below open their own SQLite file whatever this run
# uses; on another database (./scripts/test-scaled) the embedded run has
# already covered SQLite, and the 2×4 processes would only cost time.
pytestmark = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "portraitstudio.sqlite",
    reason="SQLite's own configuration; covered by the embedded run (./scripts/test)",
)
PROCESSES, THREADS, TRANSACTIONS = 4, 3, 25

WORKER = f"""
import os, time
import django
django.setup()
from django.db import OperationalError, connection, transaction
connection.ensure_connection()
# Start together, so the processes really overlap however slowly each starts.
time.sleep(max(0.0, float(os.environ["START_AT"]) - time.time()))
import threading
counts = []

def transactions():
    ok = failed = 0
    for _ in range({TRANSACTIONS}):
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT n FROM counter")
                    (n,) = cursor.fetchone()
                    time.sleep(0.002)  # the read-then-write window real code has
                    cursor.execute("UPDATE counter SET n = %s", [n + 1])
            ok += 1
        except OperationalError:
            failed += 1
    counts.append((ok, failed))
    connection.close()

threads = [threading.Thread(target=transactions) for _ in range({THREADS})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sum(c[0] for c in counts), sum(c[1] for c in counts))
"""


@pytest.mark.parametrize("mode", ["configured", "deferred"])
def test_concurrent_read_then_write_transactions(tmp_path, mode):
    db = tmp_path / "concurrency.sqlite3"
    import sqlite3

    with sqlite3.connect(db) as conn:
        # As `migrate` leaves it before any worker starts: WAL is a property of
        # the file, and converting it takes an exclusive lock, so processes
        # opening a fresh file all at once could race for the conversion.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (n INTEGER)")
        conn.execute("INSERT INTO counter VALUES (0)")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "STUDIO_DATA_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "portraitstudio.settings"}
    env["START_AT"] = str(time.time() + 8)
    script = WORKER
    if mode == "deferred":
        # The same workload on SQLite's default, to show the test can fail.
        script = script.replace(
            "django.setup()",
            "from django.conf import settings\n"
            "django.setup()\n"
            "settings.DATABASES['default']['OPTIONS']['transaction_mode'] = 'DEFERRED'\n"
            "settings.DATABASES['default']['OPTIONS']['timeout'] = 1",
        )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    counts = [tuple(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    ok = sum(c[0] for c in counts)
    failed = sum(c[1] for c in counts)
    with sqlite3.connect(db) as conn:
        (final,) = conn.execute("SELECT n FROM counter").fetchone()
    assert final == ok  # no lost updates either way
    if mode == "configured":
        assert failed == 0 and final == PROCESSES * THREADS * TRANSACTIONS
    else:
        assert failed > 0, "DEFERRED transactions were expected to hit 'database is locked'"


@pytest.mark.django_db(transaction=True)
def test_a_transaction_gives_the_process_write_lock_back_however_it_ends():
    from studio.models import Photo

    with transaction.atomic():
        assert connection.holds_write_lock
        Photo.objects.filter(pk=None).update(original_name="1")
    assert not connection.holds_write_lock
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Photo.objects.filter(pk=None).update(original_name="1")
        1 / 0  # noqa: B018
    assert not connection.holds_write_lock

    # Another thread of this process writes at once, outside a transaction and in one.
    wrote = []

    def write():
        Photo.objects.filter(pk=None).update(original_name="2")
        with transaction.atomic():
            Photo.objects.filter(pk=None).update(original_name="3")
        wrote.append(True)
        connection.close()

    other = threading.Thread(target=write)
    other.start()
    other.join(10)
    assert wrote == [True]
