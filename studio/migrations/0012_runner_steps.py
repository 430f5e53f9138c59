from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("studio", "0011_pccost_job_units"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="step_due_at",
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="step_owner",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
