"""Photos (uploads), jobs (an operation run on a photo), results, share links."""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from studio.imaging import FaceBox
from studio.operations import OPERATIONS


def _photo_path(instance, filename):
    return f"photos/{instance.pk}/{filename}"


def _result_path(instance, filename):
    return f"results/{instance.job_id}/{filename}"


class OwnedModel(models.Model):
    """Owned by a user, or (before sign-up) by an anonymous visitor's session."""

    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    owner_visitor = models.CharField(max_length=64, blank=True, db_index=True)

    class Meta:
        abstract = True

    @property
    def owner_label(self) -> str:
        if self.owner_user_id:
            return f"user #{self.owner_user_id}"
        return f"visitor {self.owner_visitor[:8]}…" if self.owner_visitor else "nobody"


class Photo(OwnedModel):
    """An uploaded photo, normalized: upright JPEG, metadata stripped."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    image = models.FileField(upload_to=_photo_path)
    thumbnail = models.FileField(upload_to=_photo_path)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    byte_size = models.PositiveIntegerField(default=0)
    source_format = models.CharField(max_length=10)
    faces = models.JSONField(default=list, help_text="Face boxes [x, y, w, h], largest first.")
    original_name = models.CharField(max_length=120, blank=True)
    # Set when the photo is a result used as the input of another operation.
    source_result = models.ForeignKey(
        "Result", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.original_name or f"Photo {str(self.pk)[:8]}"

    @property
    def face_boxes(self) -> list[FaceBox]:
        return [FaceBox.from_list(box) for box in self.faces]


class Job(OwnedModel):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Done"
        FAILED = "failed", "Failed"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    photo = models.ForeignKey(Photo, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    reference_photo = models.ForeignKey(
        Photo, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    operation = models.CharField(max_length=50, db_index=True)
    provider = models.CharField(max_length=30)
    params = models.JSONField(default=dict, blank=True)
    sandbox = models.BooleanField(default=False, help_text="Run against the vendor emulator.")

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    stage = models.CharField(max_length=80, blank=True)
    progress = models.FloatField(null=True, blank=True)
    error_message = models.TextField(blank=True, help_text="Shown to the user.")
    # Vendor bookkeeping, persisted the moment it exists so a crash can resume.
    request_id = models.CharField(max_length=64, blank=True, default="")
    vendor_task_id = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    cost = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    # Vendor credit units one run costs (Perfect Corp charges units, not money), from the
    # vendor's price list when the job was submitted (studio/costs.py); None when unknown.
    units = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    # What the vendor reported (inference time, usage, …), secrets never included.
    vendor_meta = models.JSONField(default=dict, blank=True)
    # The provider's own resume state (e.g. an uploaded file id), saved before each vendor call.
    vendor_state = models.JSONField(default=dict, blank=True)
    # The area the user painted (object removal): PNG, white = remove, same size as the photo.
    mask = models.FileField(upload_to="masks/", blank=True)
    rerun_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Jobs submitted together (several styles, templates or providers at once) share a batch,
    # which the comparison view shows side by side.
    batch = models.UUIDField(null=True, blank=True, db_index=True)
    # The style template this job was started from (its name labels the job in comparisons).
    style_template = models.ForeignKey(
        "StyleTemplate", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # "E-mail me when it's done": one e-mail per batch (or lone job) when its last job ends.
    # notified_at is set on the batch's first job by the one process that sends it (studio/done_email.py).
    notify_email = models.BooleanField(default=False)
    notified_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A vendor job holds no worker (studio/jobs/steps.py): step_due_at is when its next
    # step (submit, a poll, the download) is useful; empty while a step runs or
    # for a local job. step_owner names the step runner that runs its step now.
    step_due_at = models.DateTimeField(null=True, blank=True, db_index=True)
    step_owner = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner_user", "-created_at"]),
            models.Index(fields=["owner_visitor", "-created_at"]),
        ]

    def __str__(self):
        return f"{self.operation_label} ({self.get_status_display()})"

    @property
    def operation_spec(self):
        return OPERATIONS.get(self.operation)

    @property
    def operation_label(self) -> str:
        spec = self.operation_spec
        return spec.label if spec else self.operation

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def elapsed_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def progress_percent(self) -> int:
        if self.status == self.Status.SUCCEEDED:
            return 100
        return int(round((self.progress or 0) * 100))

    def params_display(self) -> list[tuple[str, str]]:
        """The job's settings as users know them; bookkeeping (a style's group id) left out."""
        spec = self.operation_spec
        rows = []
        for name, value in self.params.items():
            label = name
            if spec:
                try:
                    param = spec.param(name)
                except KeyError:
                    continue  # not a setting of the operation, e.g. style_group_id
                label = param.label
                if param.kind == "choice":
                    value = dict(param.choices).get(value, value)
                elif param.kind == "style" and self.params.get("style_name"):
                    value = self.params["style_name"]
            rows.append((label, value))
        return rows


class Result(models.Model):
    """One output image of a job; a job can have several."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="results")
    index = models.PositiveSmallIntegerField(default=0)
    image = models.FileField(upload_to=_result_path)
    thumbnail = models.FileField(upload_to=_result_path)
    content_type = models.CharField(max_length=30, default="image/jpeg")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    label = models.CharField(max_length=120, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    favourite = models.BooleanField(default=False, help_text="Marked by its owner, for the favourites ZIP.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="unique_result_index")]

    def __str__(self):
        return f"{self.job.operation_label} result {self.index + 1}"

    @property
    def extension(self) -> str:
        return "png" if self.content_type == "image/png" else "jpg"

    def download_name(self) -> str:
        return f"portrait-{self.job.operation}-{str(self.pk)[:8]}.{self.extension}"


def new_share_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


class ShareLink(models.Model):
    """A public, unguessable link to one result; revoking it makes the link 404."""

    result = models.ForeignKey(Result, on_delete=models.CASCADE, related_name="share_links")
    token = models.CharField(max_length=64, unique=True, default=new_share_token, editable=False)
    show_before = models.BooleanField(default=False, help_text="Also show the original photo.")
    allow_download = models.BooleanField(default=False, help_text="Viewers may download the full-size result.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Share of {self.result}"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


def _cover_path(instance, filename):
    return f"templates/{instance.slug}/{filename}"


class StyleTemplate(models.Model):
    """A saved look (prompt, seed, parameters) that users pick as a card.

    The same template with the same seed gives the same look for anyone's photo.
    """

    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.CharField(max_length=300, blank=True)
    operation = models.CharField(max_length=50, db_index=True)
    provider = models.CharField(max_length=30, blank=True)
    prompt = models.TextField(blank=True)
    seed = models.BigIntegerField(null=True, blank=True, help_text="Empty: a random seed per run.")
    params = models.JSONField(default=dict, blank=True, help_text="Other parameters of the operation.")
    cover = models.FileField(upload_to=_cover_path, blank=True)
    active = models.BooleanField(default=True)
    order = models.PositiveIntegerField(default=0)
    source_result = models.ForeignKey(Result, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The staff "preview" run on the sample portrait; its first result becomes the cover.
    preview_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self):
        return self.name

    @property
    def operation_spec(self):
        return OPERATIONS.get(self.operation)

    def run_params(self) -> dict:
        """The parameters a job started from this template gets (prompt and seed included)."""
        values = dict(self.params)
        spec = self.operation_spec
        names = {param.name for param in spec.params} if spec else set()
        if "prompt" in names and self.prompt:
            values["prompt"] = self.prompt
        if "seed" in names and self.seed is not None:
            values["seed"] = self.seed
        return values

    def clean(self):
        """Check the operation and every parameter against the catalogue's ranges."""
        from django.core.exceptions import ValidationError

        spec = self.operation_spec
        if spec is None:
            raise ValidationError({"operation": "Pick an operation from the catalogue."})
        self.provider = spec.provider
        names = {param.name for param in spec.params}
        if not isinstance(self.params, dict):
            raise ValidationError({"params": "Parameters must be a JSON object, e.g. {\"num_images\": 4}."})
        errors: dict[str, list[str]] = {}
        unknown = sorted(set(self.params) - names)
        if unknown:
            errors["params"] = [f"{spec.label} has no parameter {name!r}." for name in unknown]
        for name in ("prompt", "seed"):
            if name in self.params:
                errors.setdefault("params", []).append(f"Set {name!r} in its own field, not in the parameters.")
            if name not in names and getattr(self, name) not in (None, ""):
                errors.setdefault(name, []).append(f"{spec.label} does not take a {name}.")
        _, param_errors = spec.clean_params(self.run_params())
        for name, message in param_errors.items():
            field = name if name in ("prompt", "seed") else "params"
            errors.setdefault(field, []).append(message)
        if errors:
            raise ValidationError(errors)


# --- Vendor style catalogues (Perfect Corp hairstyles, wigs, …; studio.styles) ---------


def _style_thumb_path(instance, filename):
    return f"styles/{instance.group.provider}/{instance.group.feature}/{filename}"


class StyleGroup(models.Model):
    """A vendor's group of styles within one catalogue (e.g. "Women", "Short")."""

    provider = models.CharField(max_length=30)
    feature = models.CharField(max_length=40, help_text="The vendor's catalogue, e.g. hair-style.")
    # Vendor ids exceed 2**53: stored and sent as the exact digit string.
    group_id = models.CharField(max_length=32)
    name = models.CharField(max_length=120)
    position = models.PositiveIntegerField(default=0, help_text="Order in the vendor's list.")
    hidden = models.BooleanField(default=False, help_text="Hide the whole group from users.")
    available = models.BooleanField(default=True, help_text="Still listed by the vendor at the last sync.")
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["provider", "feature", "position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "feature", "group_id"], name="unique_style_group")
        ]

    def __str__(self):
        return f"{self.feature}: {self.name}"


class Style(models.Model):
    """One vendor style users can pick, with its thumbnail cached on our storage."""

    group = models.ForeignKey(StyleGroup, on_delete=models.CASCADE, related_name="styles")
    style_id = models.CharField(max_length=32, db_index=True)
    name = models.CharField(max_length=120)
    position = models.PositiveIntegerField(default=0)
    thumbnail = models.FileField(upload_to=_style_thumb_path, blank=True)
    thumb_width = models.PositiveIntegerField(default=0)
    thumb_height = models.PositiveIntegerField(default=0)
    # Where the vendor serves the thumbnail; only the sync reads it, browsers never do.
    vendor_thumb_url = models.CharField(max_length=1000, blank=True)
    hidden = models.BooleanField(default=False, help_text="Hide from users.")
    featured = models.BooleanField(default=False, help_text="Show first.")
    available = models.BooleanField(default=True, help_text="Still listed by the vendor at the last sync.")
    synced_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["group", "-featured", "position", "name"]
        constraints = [models.UniqueConstraint(fields=["group", "style_id"], name="unique_style_in_group")]

    def __str__(self):
        return self.name

    @property
    def offered(self) -> bool:
        return self.available and not self.hidden and self.group.available and not self.group.hidden


# --- Asking vendors to delete their copies (studio.vendor_deletion) -------------------


class VendorDeletion(models.Model):
    """One job's copies at a vendor that we asked (or will ask again) to be deleted.

    Written in the same transaction that deletes our rows, so a request is never
    lost; the snapshot holds what the provider needs once the job row is gone,
    and is emptied when the deletion is done.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Deleted"
        FAILED = "failed", "Gave up"

    provider = models.CharField(max_length=30)
    job_ref = models.CharField(max_length=40, help_text="The deleted job's id.")
    snapshot = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="vendordeletion_due")]

    def __str__(self):
        return f"{self.provider} copies of job {self.job_ref}: {self.get_status_display()}"
