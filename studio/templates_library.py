"""Style templates: a look (prompt, seed, parameters) saved from a result, its cover made on the sample portrait."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils.text import slugify

from studio import imaging
from studio.errors import ServiceError
from studio.jobs.create import job_create
from studio.models import Job, Result, StyleTemplate
from studio.ownership import Owner
from studio.photos import photo_create, read_stored

SAMPLE_PORTRAIT = Path(__file__).resolve().parent / "assets" / "sample-portrait.jpg"

COVER_LONG_SIDE = 640

SEED_MAX = 2_147_483_647  # every vendor that takes a seed accepts 1 … 2^31 − 1


def seed_pick() -> int:
    """A random seed chosen here, so it can be shown (and locked) before the job runs."""
    return secrets.randbelow(SEED_MAX) + 1


def _unique_template_slug(name: str) -> str:
    base = slugify(name)[:70] or "template"
    slug, n = base, 2
    while StyleTemplate.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def template_save_from_result(*, result: Result, name: str = "") -> StyleTemplate:
    """A new (inactive) template with the prompt, seed and parameters that made `result`.

    The result image itself is not used as the cover: it shows a user's face.
    Staff make the cover with the preview action, which runs on the sample portrait.
    """
    job = result.job
    if job.operation_spec is None:
        raise ServiceError("This result's operation is no longer offered.")
    if not {p.name for p in job.operation_spec.params} & {"prompt", "seed"}:
        raise ServiceError(f"{job.operation_label} takes no prompt or seed, so there is no look to save.")
    params = {k: v for k, v in job.params.items() if k not in ("prompt", "seed")}
    seed = result.meta.get("seed", job.params.get("seed"))
    name = (name or "").strip()[:80] or f"{job.operation_label} {str(result.pk)[:6]}"
    template = StyleTemplate(
        name=name,
        slug=_unique_template_slug(name),
        operation=job.operation,
        provider=job.provider,
        prompt=str(job.params.get("prompt") or ""),
        seed=int(seed) if seed not in (None, "", -1) else None,
        params=params,
        active=False,  # staff check it (and make a cover) before users see it
        source_result=result,
    )
    template.full_clean()
    template.save()
    return template


def template_preview(*, template: StyleTemplate, user) -> Job:
    """Run the template on the sample portrait as `user`; the result becomes its cover."""
    op = template.operation_spec
    if op is None:
        raise ServiceError(f"{template.name}: its operation is no longer offered.")
    params, errors = op.clean_params(template.run_params())
    if errors:
        raise ServiceError(f"{template.name}: " + " ".join(errors.values()))
    owner = Owner(user_id=user.pk)
    with transaction.atomic():  # the link is committed before the job can run (on_commit)
        photo = None
        if op.inputs.selfie:
            photo = photo_create(owner=owner, data=SAMPLE_PORTRAIT.read_bytes(), filename="sample-portrait.jpg")
        job = job_create(owner=owner, photo=photo, operation=op, params=params, style_template=template)
        StyleTemplate.objects.filter(pk=template.pk).update(preview_job=job)
        template.preview_job = job
    return job


def template_cover_from_preview(job_id) -> bool:
    """If this finished job is a template preview, make its first safe result the cover."""
    template = StyleTemplate.objects.filter(preview_job_id=job_id).first()
    if template is None:
        return False
    results = Result.objects.filter(job_id=job_id, job__status=Job.Status.SUCCEEDED).order_by("index")
    result = next((r for r in results if not r.meta.get("nsfw")), None)
    if result is None:
        return False
    image = imaging.load_image(read_stored(result.image))
    old = template.cover.name if template.cover else ""
    template.cover.save(
        f"cover-{str(job_id)[:8]}.jpg",
        ContentFile(imaging.encode_jpeg(imaging.resize_long_side(image, COVER_LONG_SIDE), quality=85)),
        save=False,
    )
    StyleTemplate.objects.filter(pk=template.pk).update(cover=template.cover.name)
    if old and old != template.cover.name:
        storage = template.cover.storage
        transaction.on_commit(lambda: storage.delete(old))
    return True
