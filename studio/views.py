"""Pages and their HTMX fragments.

One view per page; fragments are partials of the page template. Expected
failures (a refused photo, a job that cannot start) come back as ordinary
200 responses showing the message; 404 is for what the requester doesn't own.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from studio import (
    archive,
    deletion,
    imaging,
    job_inputs,
    media,
    photos,
    print_sheet,
    retention,
    selectors,
    sharing,
    views_compare,
)
from studio.errors import ServiceError
from studio.imaging import ImageRejected
from studio.jobs import create
from studio.limits import limited
from studio.models import Job, Photo, Result, Style
from studio.operations import GROUPS, OPERATIONS, SLOW_SECONDS, TYPICAL_SECONDS_BY_PROVIDER
from studio.ownership import Owner, claimed_user_id, owner_for, session_signed_in_as, visitor_id
from studio.submission import SubmissionForm, compare_candidates
from studio.vendors.base import PROVIDERS, get_provider

UPLOAD_FIELD = "photo"
SHARE_EXPIRY_DAYS = ("1", "7", "30")  # the choices offered on the result page


def _provider_for(op):
    """The operation's provider, or None when its adapter is not installed on this server."""
    return get_provider(op.provider) if op.provider in PROVIDERS else None


EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "static" / "studio" / "examples"
# Shown to visitors when some operations are hidden; the reasons (with setting names)
# are for staff only, on the console's Vendors page.
MORE_STYLES_LINE = "More styles — hair, headshots, characters — appear when this studio connects AI services."


def _example_for(op) -> str | None:
    """The static path of the operation's before/after picture (scripts/make_examples.py)."""
    name = f"{op.key}.jpg"
    return f"studio/examples/{name}" if (EXAMPLES_DIR / name).is_file() else None


def _operation_choices():
    """The catalogue for the picker: operations that can run here, and how many can't."""
    available, hidden = [], 0
    for op in OPERATIONS.values():
        provider = _provider_for(op)
        if provider is None or provider.unavailable_reason():
            hidden += 1  # not offered to visitors at all; staff see why on the console
            continue
        available.append({"op": op, "provider": provider, "example": _example_for(op)})
    return available, hidden


def _operation_groups(available) -> list[dict]:
    """The picker's groups (operations.GROUPS order) that have something to offer."""
    groups = []
    for key, label in GROUPS.items():
        items = [item for item in available if item["op"].group == key]
        if items:
            groups.append({"key": key, "label": label, "items": items})
    return groups


def _studio_context(request, *, photo=None, selected_op=None, values=None, errors=None, form_error=""):
    owner = owner_for(request)
    available, hidden = _operation_choices()
    offered = [item["op"] for item in available]
    # An operation that cannot run here is never preselected (nor picked by a crafted link).
    op = selected_op if selected_op in offered else (offered[0] if offered else next(iter(OPERATIONS.values())))
    values = values or views_compare.form_values(request.session, op)
    return {
        "photo": photo,
        # Callables: templates call them only when they render that part,
        # so fragments without these lists cost no queries for them.
        "recent_photos": lambda: selectors.photos_recent(owner),
        "recent_jobs": lambda: list(selectors.gallery_page(owner, per_page=6).object_list),
        "operation_groups": _operation_groups(available),
        "hidden_operations": hidden,
        "more_styles_line": MORE_STYLES_LINE,
        "selected_op": op,
        "values": values,
        # The parameter sliders are the studio form's own fields (submission.py).
        "param_fields": SubmissionForm.panel_fields(op, values),
        "style_templates": lambda: selectors.templates_for_operation(op.key),
        "compare_candidates": lambda: compare_candidates(op),
        "errors": errors or {},
        "form_error": form_error,
        "max_upload_mb": settings.STUDIO_MAX_UPLOAD_MB,
        # Named before submit: where the photo goes and how long it is kept there.
        "selected_provider": _provider_for(op),
        "retention_hours": settings.STUDIO_RETENTION_HOURS,
        "photo_due_at": (lambda: retention.photo_due_at(photo)) if photo else None,
        "notify": _notify_option(request, op),
    }


def _notify_option(request, op) -> dict:
    """The "E-mail me when it's done" box: offered to signed-in users with a verified address.

    Ticked by default for operations that usually take over 30 s (measured, or
    the provider's usual time); the page's script also ticks it when the picks
    make a batch, unless the user touched it. A re-shown form keeps what was sent.
    """
    from studio.accounts import verified_email

    email = verified_email(request.user)
    if not email:
        reason = (
            "Confirm your e-mail address to use this (see the link we sent you)."
            if request.user.is_authenticated
            else "Log in to be e-mailed when it's done."
        )
        return {"allowed": False, "reason": reason, "checked": False}
    typical = selectors.operation_typical_seconds(op.key) or TYPICAL_SECONDS_BY_PROVIDER.get(op.provider, 0)
    slow = typical > SLOW_SECONDS
    checked = request.POST.get("notify") == "1" if request.method == "POST" else slow
    return {"allowed": True, "email": email, "checked": checked, "slow": slow}


@require_GET
def home(request):
    owner = owner_for(request)
    photo = None
    if request.GET.get("photo"):
        photo = selectors.photo_get_for_owner(owner, request.GET["photo"])
    op = OPERATIONS.get(request.GET.get("operation", ""))
    context = _studio_context(request, photo=photo, selected_op=op)
    if request.htmx and request.GET.get("fragment") == "operation":
        return render(request, "studio/home.html#operation_form", context)
    return render(request, "studio/home.html", context)


@require_POST
@limited("uploads")
def photo_upload(request):
    owner = owner_for(request, create=True)
    upload = request.FILES.get(UPLOAD_FIELD)
    error = ""
    photo = None
    if upload is None:
        error = "Choose a photo first."
    elif upload.size > settings.STUDIO_MAX_UPLOAD_MB * 1024 * 1024:
        error = f"This file is larger than {settings.STUDIO_MAX_UPLOAD_MB} MB. Please upload a smaller photo."
    else:
        try:
            photo = photos.photo_create(owner=owner, data=upload.read(), filename=upload.name or "")
        except ImageRejected as exc:
            error = exc.message
    if not request.htmx:
        if error:
            messages.error(request, error)
            return redirect("studio:home")
        return redirect(f"{reverse('studio:home')}?photo={photo.pk}")
    context = _studio_context(request, photo=photo)
    context["upload_error"] = error
    return render(request, "studio/home.html#workspace", context)


@require_POST
def photo_delete(request, photo_id):
    photo = selectors.photo_get_for_owner(owner_for(request), photo_id)
    photos.photo_delete(photo=photo)
    if request.htmx:
        return HttpResponseClientRedirect(reverse("studio:home"))
    return redirect("studio:home")


@require_GET
def photo_image(request, photo_id):
    photo = selectors.photo_get_for_owner(owner_for(request), photo_id)
    field = photo.thumbnail if request.GET.get("size") == "thumb" else photo.image
    return _image_response(field, "image/jpeg")


@require_POST
@limited("jobs")
def job_create(request):
    """Check the studio form (submission.SubmissionForm) and start its jobs, one batch per submission."""
    from studio.accounts import verified_email

    owner = owner_for(request, create=True)
    form = SubmissionForm(request.POST, request.FILES, owner=owner, notify_allowed=bool(verified_email(request.user)))
    op, photo = form.operation, form.photo
    if op is None:
        raise Http404("No such operation.")
    jobs, form_error = [], ""
    if form.is_valid():
        submission = form.submission
        if submission.seed_lock is not None:
            views_compare.seed_lock_store(request.session, op, submission.locked_seed)
        try:
            jobs = create.job_create_batch(
                owner=owner, photo=photo, runs=submission.runs(), reference_photo=submission.reference_photo,
                mask=submission.mask, notify_email=submission.notify,
            )
        except ServiceError as exc:
            form_error = exc.message
    job = jobs[0] if jobs else None
    errors = form.errors_by_field()
    if not request.htmx:
        if job:
            return redirect("studio:compare", batch=job.batch) if job.batch else redirect("studio:job", job_id=job.pk)
        messages.error(request, form_error or " ".join(errors.values()) or "Please correct the highlighted values.")
        return redirect(f"{reverse('studio:home')}?{'photo=' + str(photo.pk) + '&' if photo else ''}operation={op.key}")
    context = _studio_context(
        request, photo=photo, selected_op=op, values=form.shown_values(), errors=errors, form_error=form_error
    )
    context.update(new_job=job, new_jobs=jobs)
    return render(request, "studio/home.html#submit_response", context)


@require_GET
def job_detail(request, job_id):
    job = selectors.job_get_for_owner(owner_for(request), job_id)
    return render(request, "studio/job.html", {"job": job})


@require_GET
def job_status(request, job_id):
    """The job card, polled about once a second until the job is finished.

    The card's poll URL carries the version of what it shows (?v=). While that
    is still current the answer is an empty 204, which htmx leaves unswapped:
    most polls cost one small query and no template. A changed card is
    rendered with at most one more query (tests/test_query_counts.py).
    """
    owner, state = _poll_owner_and_state(request, job_id)
    if state is None:
        raise Http404("Not found.")
    if not state.is_terminal and request.GET.get("v") == state.version:
        return HttpResponse(status=204)
    job, results = selectors.job_for_card(owner, job_id, status=state.status)
    # From a card (?v=), the estimate is the one the card already shows (hx-preserve).
    context = {"job": job, "card_results": results, "polled": "v" in request.GET}
    response = render(request, "studio/partials/job_card.html", context)
    if job.is_terminal:
        response.status_code = HttpResponseStopPolling.status_code  # 286: htmx stops polling
    return response


def _poll_owner_and_state(request, job_id):
    """Who is asking and the job's card state, in one query for visitors and users alike.

    A signed-in user is read with the job (selectors.job_card_state_for_user)
    and the session checked against it; if that check is not clean, Django's
    own request.user decides, at the cost of its usual query.
    """
    user_id = claimed_user_id(request)
    if user_id is None:  # a visitor: nothing to check beyond the session
        owner = Owner(visitor_id=visitor_id(request, create=False))
        return owner, selectors.job_card_state(owner, job_id)
    state = selectors.job_card_state_for_user(user_id, job_id)
    if state is not None and session_signed_in_as(request, state.owner_user):
        return Owner(user_id=state.owner_user.pk), state
    owner = owner_for(request)
    return owner, selectors.job_card_state(owner, job_id)


@require_POST
def job_delete(request, job_id):
    job = selectors.job_get_for_owner(owner_for(request), job_id)
    create.job_delete(job=job)
    if request.htmx:
        return HttpResponse("")  # the card removes itself
    messages.success(request, "Deleted.")
    return redirect("studio:gallery")


@require_POST
@limited("jobs")
def job_rerun(request, job_id):
    owner = owner_for(request)
    job = selectors.job_get_for_owner(owner, job_id)
    op = job.operation_spec
    if op is None:
        raise Http404("This operation is no longer offered.")
    params, errors = op.clean_params(request.POST)
    if not errors:
        # Keeps what the form doesn't show (prompt, style group); re-checks a changed style.
        params, errors = job_inputs.rerun_params(op, job, params)
    if errors:
        messages.error(request, " ".join(errors.values()))
        return redirect(request.POST.get("next") or reverse("studio:job", args=[job.pk]))
    try:
        new_job = create.job_rerun(owner=owner, job=job, params=params)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("studio:job", job_id=job.pk)
    return redirect("studio:job", job_id=new_job.pk)


@require_GET
def gallery(request):
    owner = owner_for(request)
    operation = request.GET.get("operation", "")
    status = request.GET.get("status", "")
    if operation not in OPERATIONS:
        operation = ""
    if status not in Job.Status.values:
        status = ""
    page = selectors.gallery_page(
        owner, operation=operation, status=status, page=request.GET.get("page", 1),
        per_page=settings.STUDIO_GALLERY_PAGE_SIZE,
    )
    context = {
        "page": page,
        "operation": operation,
        "status": status,
        "operations": list(OPERATIONS.values()),
        "statuses": Job.Status.choices,
        "filter_query": "&".join(f"{k}={v}" for k, v in (("operation", operation), ("status", status)) if v),
    }
    if request.htmx and request.htmx.target == "gallery-grid":
        return render(request, "studio/gallery.html#gallery_grid", context)
    return render(request, "studio/gallery.html", context)


@require_GET
def result_detail(request, result_id):
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    job = result.job
    siblings = list(job.results.all())
    share = next((link for link in result.share_links.all() if link.is_active), None)
    op = job.operation_spec
    values = {**(op.defaults() if op else {}), **job.params}
    return render(
        request,
        "studio/result.html",
        {
            # The slider only makes sense when before and after have one shape.
            "can_compare": job.photo is not None
            and abs(result.width / result.height - job.photo.width / job.photo.height) < 0.01,
            "result": result,
            "job": job,
            "siblings": siblings,
            "share": share,
            "share_url": request.build_absolute_uri(reverse("studio:share", args=[share.token])) if share else "",
            "op": op,
            "is_passport": print_sheet.is_passport(job),
            "size_caps": print_sheet.SIZE_CAPS_KB,
            "values": values,
            "param_fields": SubmissionForm.panel_fields(op, values),
            "errors": {},
        },
    )


@require_GET
def result_image(request, result_id):
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    if request.GET.get("size") == "thumb":
        thumb_type = "image/png" if result.thumbnail.name.endswith(".png") else "image/jpeg"
        return _image_response(result.thumbnail, thumb_type)
    return _image_response(result.image, result.content_type)


@require_GET
def result_download(request, result_id):
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    return _image_response(result.image, result.content_type, download_name=result.download_name())


@require_GET
def result_print_sheet(request, result_id):
    """A 6×4 in sheet of passport copies with cut marks, for passport crops only."""
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    if not print_sheet.is_passport(result.job):
        raise Http404("Print sheets are made from passport crops.")
    sheet = print_sheet.passport_sheet(_result_image(result))
    name = f"{Path(result.download_name()).stem}-print-sheet-6x4in.jpg"
    return _attachment(HttpResponse(sheet.jpeg(), content_type="image/jpeg"), name)


@require_GET
def result_export(request, result_id):
    """The result as a JPEG no larger than ?max_kb= (for upload forms with a size limit)."""
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    try:
        max_kb = int(request.GET.get("max_kb", ""))
    except ValueError:
        max_kb = 0
    if not print_sheet.MIN_CAP_KB <= max_kb <= print_sheet.MAX_CAP_KB:
        messages.error(
            request,
            f"Choose a file size limit between {print_sheet.MIN_CAP_KB} KB and {print_sheet.MAX_CAP_KB} KB.",
        )
        return redirect("studio:result", result_id=result.pk)
    try:
        data = print_sheet.jpeg_at_most(_result_image(result), max_kb * 1024)
    except print_sheet.CapTooSmall as exc:
        messages.error(request, str(exc))
        return redirect("studio:result", result_id=result.pk)
    name = f"{Path(result.download_name()).stem}-max-{max_kb}kb.jpg"
    return _attachment(HttpResponse(data, content_type="image/jpeg"), name)


def _result_image(result):
    with result.image.open("rb") as fh:
        data = fh.read()
    return imaging.load_image(data, max_bytes=max(len(data), 1))  # our own file: no upload cap


def _attachment(response, filename: str):
    """A generated download (print sheet, export, ZIP): a file name, and never cached on the way."""
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


@require_POST
def result_favourite(request, result_id):
    """Mark or unmark a result as a favourite (for the favourites ZIP)."""
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    result.favourite = request.POST.get("favourite") == "1"
    result.save(update_fields=["favourite"])
    if request.htmx:
        return render(request, "studio/result.html#favourite_button", {"result": result})
    return redirect("studio:result", result_id=result.pk)


@require_GET
def gallery_zip(request):
    """The whole gallery, or with ?favourites=1 the favourites, as one streamed ZIP."""
    favourites = request.GET.get("favourites") == "1"
    results = selectors.results_for_archive(owner_for(request), favourites=favourites)
    if not results.exists():
        messages.info(
            request, "No favourites yet: mark results with ☆ first." if favourites else "No results to download yet."
        )
        return redirect("studio:gallery")
    name = "portrait-studio-favourites.zip" if favourites else "portrait-studio-gallery.zip"
    return _zip_response(results, name)


@require_GET
def batch_zip(request, batch):
    """Every result of one submission (a batch), as one streamed ZIP."""
    owner = owner_for(request)
    results = selectors.results_for_archive(owner, batch=batch)
    first = results.first()
    if first is None:
        selectors.batch_jobs_for_owner(owner, batch)  # 404 unless the batch is the requester's
        messages.info(request, "This batch has no results to download yet.")
        return redirect("studio:compare", batch=batch)
    return _zip_response(results, f"portrait-studio-{first.job.operation}-batch-{str(batch)[:8]}.zip")


def _zip_response(results, filename: str) -> StreamingHttpResponse:
    chunks = archive.zip_chunks(results.iterator(chunk_size=50))
    return _attachment(StreamingHttpResponse(chunks, content_type="application/zip"), filename)


@require_POST
def result_delete(request, result_id):
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    deletion.result_delete(result=result)
    messages.success(request, "The result was deleted.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("studio:gallery"))
    return redirect("studio:gallery")


@require_POST
@limited("uploads")
def result_chain(request, result_id):
    """Use a result as the input photo of another operation."""
    owner = owner_for(request, create=True)
    result = selectors.result_get_for_owner(owner, result_id)
    try:
        photo = photos.photo_from_result(owner=owner, result=result)
    except ImageRejected as exc:
        messages.error(request, exc.message)
        return redirect("studio:result", result_id=result.pk)
    return redirect(f"{reverse('studio:home')}?photo={photo.pk}")


@require_POST
def result_share(request, result_id):
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    if request.POST.get("enabled") == "1":
        days = request.POST.get("expires_days", "")
        expires_at = timezone.now() + timedelta(days=int(days)) if days in SHARE_EXPIRY_DAYS else None
        share = sharing.share_enable(
            result=result,
            show_before=request.POST.get("show_before") == "1",
            allow_download=request.POST.get("allow_download") == "1",
            expires_at=expires_at,
        )
    else:
        sharing.share_disable(result=result)
        share = None
    if not request.htmx:
        return redirect("studio:result", result_id=result.pk)
    context = {
        "result": result,
        "share": share,
        "share_url": request.build_absolute_uri(reverse("studio:share", args=[share.token])) if share else "",
    }
    return render(request, "studio/result.html#share_panel", context)


# --- Privacy -------------------------------------------------------------------


@require_GET
def privacy(request):
    """What is kept, for how long, where photos go; and the delete-everything button."""
    owner = owner_for(request)
    providers = {}
    for op in OPERATIONS.values():
        provider = _provider_for(op)
        if provider is not None:
            providers.setdefault(provider.key, provider)
    return render(
        request,
        "studio/privacy.html",
        {
            "retention_hours": settings.STUDIO_RETENTION_HOURS,
            "providers": list(providers.values()),
            "counts": {
                "photos": Photo.objects.filter(owner.q()).count(),
                "jobs": Job.objects.filter(owner.q()).count(),
            },
        },
    )


@require_POST
def delete_everything(request):
    counts = deletion.owner_delete_everything(owner=owner_for(request))
    messages.success(
        request,
        f"Deleted {counts['photos']} photo(s), {counts['jobs']} job(s), {counts['results']} result(s) "
        f"and {counts['shares']} share link(s). Vendors that offer deletion were asked to delete their copies.",
    )
    if request.htmx:
        return HttpResponseClientRedirect(reverse("studio:privacy"))
    return redirect("studio:privacy")


@require_POST
def account_delete(request):
    """Delete the signed-in account and all its work, after the password is typed again."""
    from django.contrib.auth import logout

    if not request.user.is_authenticated:
        messages.error(request, "Log in first to delete your account.")
        return redirect("studio:privacy")
    if not request.user.check_password(request.POST.get("password", "")):
        messages.error(request, "That is not your password; your account was not deleted.")
        return redirect("studio:privacy")
    email = request.user.email
    counts = deletion.account_delete(user=request.user)
    logout(request)
    messages.success(
        request,
        f"Your account {email} was deleted, with {counts['photos']} photo(s), {counts['jobs']} job(s) and "
        f"{counts['results']} result(s). Vendors that offer deletion were asked to delete their copies.",
    )
    return redirect("studio:privacy")


# --- Public share pages ------------------------------------------------------


@require_GET
def share_page(request, token):
    link = selectors.share_get_active(token)
    result = link.result
    response = render(
        request,
        "studio/share.html",
        {
            "link": link,
            "result": result,
            "job": result.job,
            "show_before": link.show_before and result.job.photo is not None,
            "page_url": request.build_absolute_uri(),
            "image_url": request.build_absolute_uri(reverse("studio:share_image", args=[token])),
        },
    )
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


@require_GET
def share_image(request, token):
    link = selectors.share_get_active(token)
    response = _image_response(link.result.image, link.result.content_type)
    response["X-Robots-Tag"] = "noindex"
    return response


@require_GET
def share_download(request, token):
    """The shared result as a file, when its owner allowed downloads."""
    link = selectors.share_get_active(token)
    if not link.allow_download:
        raise Http404("The owner did not allow downloads of this result.")
    response = _image_response(link.result.image, link.result.content_type, download_name=link.result.download_name())
    response["X-Robots-Tag"] = "noindex"
    return response


@require_GET
def share_zip(request, token):
    """The shared result as a ZIP (full size and its 600×600 profile copy), when downloads are allowed."""
    link = selectors.share_get_active(token)
    if not link.allow_download:
        raise Http404("The owner did not allow downloads of this result.")
    results = Result.objects.filter(pk=link.result_id).select_related("job", "job__style_template")
    response = _zip_response(results, f"{Path(link.result.download_name()).stem}.zip")
    response["X-Robots-Tag"] = "noindex"
    return response


@require_GET
def share_before_image(request, token):
    link = selectors.share_get_active(token)
    photo = link.result.job.photo
    if not link.show_before or photo is None:
        raise Http404("The original photo is not shared.")
    return _image_response(photo.image, "image/jpeg")


def _image_response(field, content_type, *, download_name=None):
    """Called only after the ownership check: streams the file or redirects to a signed URL."""
    return media.serve(field, content_type, download_name=download_name)


# --- Style catalogues (studio.styles) ---------------------------------------------


@require_GET
def style_thumbnail(request, style_id):
    """A catalogue thumbnail from our own storage: browsers never fetch from the vendor."""
    style = get_object_or_404(Style.objects.select_related("group"), pk=style_id)
    if not style.thumbnail or not (style.offered or (request.user.is_authenticated and request.user.is_staff)):
        raise Http404("No such style.")
    return media.serve(
        style.thumbnail, "image/jpeg", public=True, max_age=86400, missing="This thumbnail is no longer stored."
    )
