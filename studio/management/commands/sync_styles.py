"""`manage.py sync_styles [--feature hair-style]`: refresh the vendor style catalogues."""

from django.core.management.base import BaseCommand, CommandError

from studio import styles


class Command(BaseCommand):
    help = "Fetch the vendors' style catalogues (groups, styles, thumbnails) into the database."

    def add_arguments(self, parser):
        parser.add_argument("--feature", help="Only this catalogue, e.g. hair-style.")

    def handle(self, *args, feature=None, **options):
        if feature and not styles.catalogues(feature):
            known = ", ".join(name for _, name in styles.catalogues())
            raise CommandError(f"No operation offers a catalogue called {feature!r}. Known: {known}.")
        reports = styles.styles_sync(feature=feature)
        for report in reports:
            self.stdout.write(str(report))
        if reports and all(report.error for report in reports):
            raise CommandError("No catalogue could be synced.")
