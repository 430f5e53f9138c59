from django import forms
from django.contrib import admin
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from studio import media
from studio.models import Job, Photo, Result, ShareLink, Style, StyleGroup, StyleTemplate

# Photos are private: the public views serve them to their owner only, so the
# admin gets its own staff-only thumbnail view (wrapped in admin_view below).
_THUMB_MODELS = {"photo": Photo, "result": Result}


def admin_thumbnail(request, kind, pk):
    model = _THUMB_MODELS.get(kind)
    if model is None:
        raise Http404
    obj = get_object_or_404(model, pk=pk)
    return media.serve(obj.thumbnail, "image/jpeg", max_age=0)


_original_get_urls = admin.site.get_urls


def _get_urls():
    return [
        path("studio-thumbnail/<str:kind>/<uuid:pk>", admin.site.admin_view(admin_thumbnail), name="studio_thumbnail"),
        *_original_get_urls(),
    ]


admin.site.get_urls = _get_urls


def _thumb_url(kind: str, pk) -> str:
    return reverse("admin:studio_thumbnail", args=[kind, pk])


def _thumb(url: str | None, size: int = 64):
    if not url:
        return "—"
    return format_html('<img src="{}" width="{}" height="{}" alt="" loading="lazy">', url, size, size)


class OwnerListFilter(admin.SimpleListFilter):
    title = "owner kind"
    parameter_name = "owner_kind"

    def lookups(self, request, model_admin):
        return (("user", "Signed-in users"), ("visitor", "Anonymous visitors"))

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(owner_user__isnull=False)
        if self.value() == "visitor":
            return queryset.filter(owner_user__isnull=True)
        return queryset


class ResultInline(admin.TabularInline):
    model = Result
    extra = 0
    fields = ("preview", "index", "label", "width", "height", "content_type")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    @admin.display(description="Preview")
    def preview(self, obj):
        return _thumb(_thumb_url("result", obj.pk))


@admin.register(Photo)
class PhotoAdmin(admin.ModelAdmin):
    list_display = ("preview", "__str__", "owner_label", "width", "height", "face_count", "source_format", "created_at")
    list_filter = ("source_format", OwnerListFilter, "created_at")
    search_fields = ("id", "original_name", "owner_user__username", "owner_visitor")
    readonly_fields = ("id", "preview_large", "width", "height", "byte_size", "source_format", "faces", "created_at")
    exclude = ("image", "thumbnail")
    date_hierarchy = "created_at"

    @admin.display(description="Preview")
    def preview(self, obj):
        return _thumb(_thumb_url("photo", obj.pk))

    @admin.display(description="Photo")
    def preview_large(self, obj):
        return _thumb(_thumb_url("photo", obj.pk), 240)

    @admin.display(description="Faces")
    def face_count(self, obj):
        return len(obj.faces)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("preview", "operation", "provider", "status", "stage", "owner_label", "duration", "created_at")
    list_filter = ("status", "operation", "provider", "sandbox", OwnerListFilter, "created_at")
    search_fields = ("id", "vendor_task_id", "request_id", "owner_user__username", "owner_visitor", "error_message")
    readonly_fields = (
        "id", "photo", "reference_photo", "operation", "provider", "params", "sandbox", "status", "stage",
        "progress", "error_message", "request_id", "vendor_task_id", "attempts", "cost", "rerun_of",
        "created_at", "started_at", "heartbeat_at", "finished_at",
    )
    exclude = ("owner_user", "owner_visitor")
    inlines = [ResultInline]
    date_hierarchy = "created_at"
    list_select_related = ("photo",)

    @admin.display(description="Photo")
    def preview(self, obj):
        if not obj.photo_id:
            return "—"
        return _thumb(_thumb_url("photo", obj.photo_id))

    @admin.display(description="Duration")
    def duration(self, obj):
        seconds = obj.elapsed_seconds
        return "—" if seconds is None else f"{seconds:.1f} s"


@admin.register(Result)
class ResultAdmin(admin.ModelAdmin):
    list_display = ("preview", "__str__", "width", "height", "content_type", "created_at")
    list_filter = ("content_type", "job__operation", "created_at")
    search_fields = ("id", "job__id", "label")
    readonly_fields = ("id", "job", "index", "content_type", "width", "height", "label", "meta", "created_at")
    exclude = ("image", "thumbnail")
    list_select_related = ("job",)

    @admin.display(description="Preview")
    def preview(self, obj):
        return _thumb(_thumb_url("result", obj.pk))


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ("preview", "result", "is_active", "show_before", "created_at", "expires_at", "revoked_at")
    list_filter = ("show_before", "created_at", "revoked_at")
    search_fields = ("result__id",)
    readonly_fields = ("result", "token", "created_at")
    list_select_related = ("result", "result__job")

    @admin.display(description="Preview")
    def preview(self, obj):
        return _thumb(_thumb_url("result", obj.result_id))

    @admin.display(boolean=True, description="Active")
    def is_active(self, obj):
        return obj.is_active


# --- Vendor style catalogues (studio.styles) ------------------------------------


@admin.action(description="Sync now from the vendor (all catalogues of the selected rows)")
def sync_styles_now(modeladmin, request, queryset):
    from django.contrib import messages

    from studio import styles

    features = sorted({row.feature if isinstance(row, StyleGroup) else row.group.feature for row in queryset})
    for feature in features or [None]:
        for report in styles.styles_sync(feature=feature):
            level = messages.ERROR if report.error else messages.SUCCESS
            modeladmin.message_user(request, str(report), level)


def _sync_all_view(model_admin):
    """POST-only admin view behind the changelists' "Sync all catalogues now" button."""

    def view(request):
        from django.http import HttpResponseNotAllowed
        from django.shortcuts import redirect

        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not model_admin.has_change_permission(request):
            raise Http404
        sync_styles_now(model_admin, request, StyleGroup.objects.none())
        return redirect("admin:studio_style_changelist")

    return view


@admin.register(StyleGroup)
class StyleGroupAdmin(admin.ModelAdmin):
    change_list_template = "admin/studio/styles_change_list.html"  # adds "Sync all catalogues now"
    list_display = ("name", "feature", "provider", "group_id", "position", "hidden", "available", "synced_at")
    list_editable = ("hidden",)
    list_filter = ("provider", "feature", "hidden", "available")
    search_fields = ("name", "group_id")
    readonly_fields = ("provider", "feature", "group_id", "name", "position", "available", "synced_at")
    actions = [sync_styles_now]

    def get_urls(self):
        sync = path("sync/", self.admin_site.admin_view(_sync_all_view(self)), name="studio_styles_sync")
        return [sync, *super().get_urls()]


@admin.register(Style)
class StyleAdmin(admin.ModelAdmin):
    change_list_template = "admin/studio/styles_change_list.html"  # adds "Sync all catalogues now"
    list_display = ("preview", "name", "group", "style_id", "featured", "hidden", "available", "synced_at")
    list_editable = ("featured", "hidden")
    list_filter = ("group__feature", "featured", "hidden", "available", "group")
    search_fields = ("name", "style_id", "group__name")
    readonly_fields = ("preview", "group", "style_id", "name", "position", "vendor_thumb_url", "available", "synced_at")
    exclude = ("thumbnail", "thumb_width", "thumb_height")
    list_select_related = ("group",)
    actions = [sync_styles_now]

    @admin.display(description="Thumbnail")
    def preview(self, obj):
        if not obj.thumbnail:
            return "—"
        return _thumb(reverse("studio:style_thumbnail", args=[obj.pk]))


# --- Style templates (prompt + seed + parameters users pick as cards) -------------


def _template_operation_choices():
    """Catalogue operations a template can drive: those taking a prompt or a seed."""
    from studio.operations import OPERATIONS

    return [
        (op.key, f"{op.label} ({op.provider})")
        for op in OPERATIONS.values()
        if any(param.name in ("prompt", "seed") for param in op.params)
    ]


class StyleTemplateForm(forms.ModelForm):
    operation = forms.ChoiceField(choices=_template_operation_choices)

    class Meta:
        model = StyleTemplate
        fields = ("name", "slug", "description", "operation", "prompt", "seed", "params", "cover", "active", "order")
        help_texts = {
            "seed": "Fixed seed: the same template with the same seed gives the same look for any person. "
            "Empty: a random seed per run.",
            "params": "Other parameters as a JSON object, e.g. {\"num_images\": 4}; checked against the "
            "operation's ranges (see “Parameters” below). Empty: the user's choices.",
        }


@admin.action(description="Preview: run on the sample portrait; the result becomes the cover")
def preview_templates(modeladmin, request, queryset):
    from django.contrib import messages

    from studio import templates_library
    from studio.errors import ServiceError

    for template in queryset:
        try:
            job = templates_library.template_preview(template=template, user=request.user)
        except ServiceError as exc:
            modeladmin.message_user(request, exc.message, messages.ERROR)
            continue
        job.refresh_from_db()
        modeladmin.message_user(
            request,
            format_html(
                "Preview of “{}”: <a href=\"{}\">job {}</a> ({}). The cover is set when it succeeds.",
                template.name,
                reverse("admin:studio_job_change", args=[job.pk]),
                str(job.pk)[:8],
                job.get_status_display(),
            ),
            messages.ERROR if job.status == Job.Status.FAILED else messages.SUCCESS,
        )


@admin.register(StyleTemplate)
class StyleTemplateAdmin(admin.ModelAdmin):
    form = StyleTemplateForm
    list_display = ("cover_thumb", "name", "operation", "seed", "active", "order", "preview_state")
    list_display_links = ("cover_thumb", "name")
    list_editable = ("active", "order")
    list_filter = ("active", "operation")
    search_fields = ("name", "slug", "prompt", "description")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("cover_preview", "provider", "param_reference", "source_result", "preview_state", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "description", "active", "order")}),
        ("Look", {"fields": ("operation", "provider", "prompt", "seed", "params", "param_reference")}),
        ("Cover", {"fields": ("cover_preview", "cover", "preview_state", "source_result", "updated_at")}),
    )
    actions = [preview_templates]
    list_select_related = ("preview_job",)

    def _cover_url(self, obj):
        if not obj.cover:
            return None
        return f"{reverse('studio:template_cover', args=[obj.slug])}?v={int(obj.updated_at.timestamp())}"

    @admin.display(description="Cover")
    def cover_thumb(self, obj):
        return _thumb(self._cover_url(obj))

    @admin.display(description="Cover preview")
    def cover_preview(self, obj):
        url = self._cover_url(obj) if obj and obj.pk else None
        return _thumb(url, 240) if url else "No cover yet: users see a neutral card. Run the “Preview” action."

    @admin.display(description="Preview run")
    def preview_state(self, obj):
        job = obj.preview_job
        if job is None:
            return "—"
        text = job.get_status_display() + (f": {job.error_message}" if job.error_message else "")
        return format_html('<a href="{}">{}</a>', reverse("admin:studio_job_change", args=[job.pk]), text)

    @admin.display(description="Parameters")
    def param_reference(self, obj):
        from django.utils.html import format_html_join

        spec = obj.operation_spec if obj and obj.pk else None
        if spec is None:
            return "Save once to see the operation's parameters and their ranges."
        rows = format_html_join(
            "", "<li><code>{}</code> — {} {}</li>", ((p.name, p.label, p.describe_range()) for p in spec.params)
        )
        return format_html("<ul>{}</ul>", rows)


@admin.action(description="Save as style template (prompt, seed, parameters)")
def save_results_as_templates(modeladmin, request, queryset):
    from django.contrib import messages
    from django.core.exceptions import ValidationError

    from studio import templates_library
    from studio.errors import ServiceError

    for result in queryset.select_related("job"):
        try:
            template = templates_library.template_save_from_result(result=result)
        except (ServiceError, ValidationError) as exc:
            text = exc.message if isinstance(exc, ServiceError) else " ".join(exc.messages)
            modeladmin.message_user(request, f"{result}: {text}", messages.ERROR)
            continue
        modeladmin.message_user(
            request,
            format_html(
                'Saved <a href="{}">{}</a> (inactive): preview it to make a cover, then activate it.',
                reverse("admin:studio_styletemplate_change", args=[template.pk]),
                template.name,
            ),
            messages.SUCCESS,
        )


ResultAdmin.actions = [*(ResultAdmin.actions or ()), save_results_as_templates]
