from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("studio", "0010_accounts_notify"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="units",
            field=models.DecimalField(blank=True, decimal_places=2, max_digits=10, null=True),
        ),
    ]
