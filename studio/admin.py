from django.contrib import admin
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from studio.models import Job, Photo, Result, ShareLink

# Photos are private: the public views serve them to their owner only, so the
# admin gets its own staff-only thumbnail view (wrapped in admin_view below).
_THUMB_MODELS = {"photo": Photo, "result": Result}


def admin_thumbnail(request, kind, pk):
    model = _THUMB_MODELS.get(kind)
    if model is None:
        raise Http404
    obj = get_object_or_404(model, pk=pk)
    try:
        return FileResponse(obj.thumbnail.open("rb"), content_type="image/jpeg")
    except (FileNotFoundError, ValueError):
        raise Http404 from None


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
