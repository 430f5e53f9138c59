"""Five starter headshot templates (prompt + fixed seed), so the studio has cards on day one.

Covers stay empty (a neutral placeholder card) until staff run the admin's
"preview" action, which renders each template on the sample portrait.
"""

from django.db import migrations

STARTERS = [
    (
        "Corporate",
        "corporate",
        "Navy blazer, soft grey backdrop, even key light: the annual-report look.",
        "professional corporate headshot, navy blazer, white shirt, soft grey seamless studio backdrop, "
        "even key light with gentle fill, sharp focus on the eyes, natural skin, confident friendly expression",
        48213,
    ),
    (
        "LinkedIn",
        "linkedin",
        "Approachable and bright, smart-casual, softly blurred office behind you.",
        "linkedin profile photo, smart casual outfit, bright modern office softly out of focus behind, "
        "warm natural window light, approachable smile, head and shoulders, shallow depth of field",
        20517,
    ),
    (
        "Studio grey",
        "studio-grey",
        "Classic studio portrait on mottled grey with a rim light.",
        "classic studio portrait, hand-painted mottled grey canvas backdrop, rembrandt lighting with a subtle "
        "rim light, dark neutral clothing, timeless photographic look, medium format",
        7741,
    ),
    (
        "Outdoor natural light",
        "outdoor-natural-light",
        "Golden-hour park, green bokeh, relaxed.",
        "outdoor portrait at golden hour, park with green trees in soft bokeh, warm backlight in the hair, "
        "natural relaxed expression, casual jacket, 85mm lens look",
        33890,
    ),
    (
        "Creative colour",
        "creative-colour",
        "Bold coloured backdrop and gels for creative profiles.",
        "creative editorial headshot, bold teal backdrop with a magenta gel rim light, modern styling, "
        "crisp contrast, playful confident expression, magazine quality",
        61274,
    ),
]


def add_starters(apps, schema_editor):
    StyleTemplate = apps.get_model("studio", "StyleTemplate")
    for order, (name, slug, description, prompt, seed) in enumerate(STARTERS, start=1):
        StyleTemplate.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "description": description,
                "operation": "ai_headshot",
                "provider": "headshot",
                "prompt": prompt,
                "seed": seed,
                "params": {},  # the operation's defaults: size, image count, identity strength
                "order": order * 10,
                "active": True,
            },
        )


def remove_starters(apps, schema_editor):
    StyleTemplate = apps.get_model("studio", "StyleTemplate")
    StyleTemplate.objects.filter(slug__in=[row[1] for row in STARTERS], source_result__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("studio", "0005_template_links"),
    ]

    operations = [migrations.RunPython(add_starters, remove_starters)]
