"""Serve every sandbox emulator from one process, for all web and worker processes.

Start the web server and workers with STUDIO_SANDBOX=1 and STUDIO_SANDBOX_URL
set to the address printed here; they then share these emulators, so a job
resumed by another worker finds its vendor task (studio/vendors/emulators/host.py).
"""

from __future__ import annotations

import signal
import threading
from contextlib import suppress

from django.core.management.base import BaseCommand

from studio.vendors import sandbox
from studio.vendors.emulators.host import EmulatorHost


class Command(BaseCommand):
    help = "Serve every vendor emulator on 127.0.0.1 for processes started with STUDIO_SANDBOX_URL."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free one)")

    def handle(self, *args, port, **options):
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        host = EmulatorHost()
        for emulator in host.emulators.values():
            sandbox._for_sandbox(emulator)  # e.g. Perfect Corp v2 webhooks to STUDIO_PUBLIC_URL
        with host.serve(port=port) as url:
            self.stdout.write(self.style.SUCCESS(f"Emulators of {', '.join(host.emulators)} at {url}"))
            self.stdout.write(f"Start the web server and workers with STUDIO_SANDBOX=1 STUDIO_SANDBOX_URL={url}")
            self.stdout.flush()
            with suppress(KeyboardInterrupt):  # Ctrl-C
                stopped.wait()
