"""Create the database cache table, so `migrate` alone prepares a fresh install.

The cache is shared by all processes (vendor tokens, request budget, abuse
limits); createcachetable does nothing when the cache is not a database one.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("studio", "0002_vendor_state_and_templates")]
    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
