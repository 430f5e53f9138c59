"""Ring the step runners: a step just fell due (a webhook came, a job was created), look now.

A step runner looks for due steps every STUDIO_STEP_TICK_MS; a ring makes it
look at once, so a job a webhook woke is taken within milliseconds instead of
within a tick. A ring is only a hint: a lost one costs a tick, never a step.

- Scaled (REDIS_URL): one PUBLISH on a channel every runner process subscribes
  to, whatever machine it is on.
- Embedded (one machine): a datagram to each runner process's Unix socket
  under DATA_DIR/run/. A socket whose process is gone is removed by the next ring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)


def _channel() -> str:
    return cache.make_key("studio:steps:doorbell")  # the cache's prefix: sites sharing a Redis stay apart


def _socket_dir() -> Path:
    return Path(settings.DATA_DIR) / "run"


def ring() -> None:
    """Tell every step runner to look for due steps now."""
    try:
        if settings.REDIS_URL:
            from studio.wakeup import redis_client

            redis_client().publish(_channel(), b"1")
        else:
            _ring_sockets()
    except Exception:  # a hint: the runners' next tick finds the step anyway
        log.debug("could not ring the step runners", exc_info=True)


def _ring_sockets() -> None:
    paths = list(_socket_dir().glob("steps-*.sock"))
    if not paths:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for path in paths:
            try:
                sender.sendto(b"1", str(path))
            except BlockingIOError:
                pass  # its queue is full of rings already
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone


class Listener:
    """Calls `on_ring` (from a thread of its own) whenever someone rings, until closed."""

    def __init__(self, on_ring: Callable[[], None], *, name: str = ""):
        self.on_ring = on_ring
        self.name = name or str(os.getpid())  # one socket per runner process
        self.closed = threading.Event()
        self._close: Callable[[], None] = lambda: None

    def start(self) -> bool:
        """Start listening; False when this configuration can't (the runner then keeps its tick)."""
        try:
            target = self._listen_redis() if settings.REDIS_URL else self._listen_socket()
        except Exception:
            log.warning("step runner doorbell unavailable; looking for due steps every tick", exc_info=True)
            return False
        threading.Thread(target=target, name="steps-doorbell", daemon=True).start()
        return True

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            self._close()

    def _listen_socket(self) -> Callable[[], None]:
        directory = _socket_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"steps-{self.name}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an earlier process of this pid
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))

        def close():
            receiver.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

        self._close = close

        def listen():
            while not self.closed.is_set():
                try:
                    receiver.recv(64)
                except OSError:
                    return  # closed
                self.on_ring()

        return listen

    def _listen_redis(self) -> Callable[[], None]:
        from studio.wakeup import redis_client

        subscription = redis_client().pubsub(ignore_subscribe_messages=True)
        subscription.subscribe(_channel())
        self._close = subscription.close

        def listen():
            while not self.closed.is_set():
                try:
                    if subscription.get_message(timeout=1.0) is not None:
                        self.on_ring()
                except Exception:
                    if self.closed.is_set():
                        return
                    log.warning("step runner doorbell: Redis unavailable; retrying", exc_info=True)
                    self.closed.wait(1.0)

        return listen
