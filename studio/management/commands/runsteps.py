"""The step runner: runs vendor jobs' steps (submit, polls, download) as they fall due."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run vendor jobs' steps as they fall due (studio/jobs/steps.py); one or more per vendor machine."

    def handle(self, *args, **options):
        from studio.jobs import steps

        steps.run_forever(
            processes=settings.STUDIO_STEP_PROCESSES,
            at_once=settings.STUDIO_STEPS_AT_ONCE,
            slow_at_once=settings.STUDIO_SLOW_STEPS_AT_ONCE,
            stdout=self.stdout,
        )
