"""Who gets what: every URL of the app, as the owner, another visitor, another user and staff.

The URL list comes from the resolver, so a URL added later that is not
classified below makes `test_every_url_is_classified` fail: whoever adds a
URL decides here who may use it.

Roles:
  owner    an anonymous visitor who uploaded the photo and owns the work
  visitor  another anonymous visitor
  user     another signed-in user
  staff    a staff superuser who does not own the work (staff get no back
           door into people's photos through the studio's own views)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from studio import signed_media
from studio.models import Job, Photo, Result, ShareLink
from studio.sharing import share_enable
from tests import images
from tests.media import fetch

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = ("visitor", "user", "staff", "owner")  # the owner goes last: its POSTs change things
OUTSIDERS = ("visitor", "user", "staff")


@dataclass(frozen=True)
class Rule:
    """How one URL is used and what each role gets."""

    method: str  # "GET" or "POST"
    expect: dict[str, int | tuple[int, ...]]
    data: dict = field(default_factory=dict)
    other_method: int | None = 405  # the status for the wrong method (None: both are used)
    keeps: bool = False  # outsiders' requests must leave the owner's work untouched


def everyone(status) -> dict:
    return dict.fromkeys(ROLES, status)


def owner_only(owner_status) -> dict:
    return {**dict.fromkeys(OUTSIDERS, 404), "owner": owner_status}


def staff_only(staff_status=200) -> dict:
    # Anonymous people are sent to the admin login; signed-in non-staff see a 404.
    return {"visitor": 302, "owner": 302, "user": 404, "staff": staff_status}


OK_OR_REDIRECT = (200, 302)
SIGNED_IN_ONLY = {"visitor": 302, "owner": 302, "user": 200, "staff": 200}  # anonymous: to the log-in page

MATRIX: dict[str, Rule] = {
    # Public pages
    "studio:home": Rule("GET", everyone(200)),
    "studio:gallery": Rule("GET", everyone(200)),  # each sees only their own (asserted below)
    "studio:privacy": Rule("GET", everyone(200)),
    # Accounts (django-allauth). Signed in, the log-in and sign-up pages send you on.
    "account_login": Rule("GET", {"visitor": 200, "owner": 200, "user": 302, "staff": 302}, other_method=None),
    "account_signup": Rule("GET", {"visitor": 200, "owner": 200, "user": 302, "staff": 302}, other_method=None),
    # GET shows a "really log out?" form to the signed-in; POST logs out.
    "account_logout": Rule("POST", everyone(302), other_method=None),
    "account_inactive": Rule("GET", everyone(200)),
    # "We sent you a link"; the link itself (an unknown key here: a page saying it is invalid, 404 on POST).
    "account_email_verification_sent": Rule("GET", everyone(200)),
    "account_confirm_email": Rule("GET", everyone(200), other_method=None),
    # Password reset: anyone may ask; an unknown key shows "invalid link".
    "account_reset_password": Rule("GET", everyone(200), other_method=None),
    "account_reset_password_done": Rule("GET", everyone(200)),
    "account_reset_password_from_key": Rule("GET", everyone(200), other_method=None),
    "account_reset_password_from_key_done": Rule("GET", everyone(200)),
    # Signed in only: anonymous people are sent to the log-in page.
    "account_change_password": Rule("GET", SIGNED_IN_ONLY, other_method=None),
    "account_email": Rule("GET", SIGNED_IN_ONLY, other_method=None),
    "account_reauthenticate": Rule("GET", SIGNED_IN_ONLY, other_method=None),
    # These users have a password: "set a password" sends them to "change password".
    "account_set_password": Rule("GET", everyone(302), other_method=None),
    # Log-in and re-authentication by code are not enabled: these only redirect.
    "account_confirm_login_code": Rule("GET", everyone(302), other_method=None),
    "account_request_reauthentication_code": Rule("GET", everyone(302), other_method=None),
    "account_confirm_reauthentication_code": Rule("GET", everyone(302), other_method=None),
    # Deleting one's account needs the password typed again (none here: nothing is deleted).
    "studio:account_delete": Rule("POST", everyone(302), keeps=True),
    # Acting on one's own work only
    "studio:photo_upload": Rule("POST", everyone(302), data={"_upload": True}),  # to the new photo
    "studio:delete_everything": Rule("POST", everyone(302), keeps=True),
    "studio:job_create": Rule(
        "POST", owner_only(302), data={"photo": "{photo}", "operation": "studio_retouch"}, keeps=True
    ),
    # The owner's photo, jobs and results
    "studio:photo_image": Rule("GET", owner_only(200)),
    "studio:photo_delete": Rule("POST", owner_only(302), keeps=True),
    "studio:job": Rule("GET", owner_only(200)),
    "studio:job_status": Rule("GET", owner_only(286)),  # a finished job's card stops polling
    "studio:job_delete": Rule("POST", owner_only(302), keeps=True),
    "studio:job_rerun": Rule("POST", owner_only(302), data={"strength": "0.5"}, keeps=True),
    "studio:compare": Rule("GET", owner_only(200)),
    "studio:batch_zip": Rule("GET", owner_only(200)),
    # Everyone may ask for their own gallery's ZIP; the outsiders have no results: back to the gallery.
    "studio:gallery_zip": Rule("GET", {**dict.fromkeys(OUTSIDERS, 302), "owner": 200}),
    "studio:result": Rule("GET", owner_only(200)),
    "studio:result_image": Rule("GET", owner_only(200)),
    "studio:result_download": Rule("GET", owner_only(200)),
    "studio:result_export": Rule("GET", owner_only(200), data={"max_kb": "100"}),
    # This world's result is a retouch, not a passport crop, so its owner gets no sheet either;
    # tests/test_print_sheet.py runs a passport crop (owner 200, anyone else 404).
    "studio:result_print_sheet": Rule("GET", owner_only(404)),
    "studio:result_delete": Rule("POST", owner_only(302), keeps=True),
    "studio:result_favourite": Rule("POST", owner_only(302), data={"favourite": "1"}, keeps=True),
    "studio:result_chain": Rule("POST", owner_only(302), keeps=True),
    "studio:result_share": Rule("POST", owner_only(302), data={"enabled": "1"}, keeps=True),
    # Seeds exist only for seeded (vendor) operations: for a local result even the owner gets 404.
    "studio:result_reseed": Rule("POST", owner_only(404), data={"mode": "new_seed"}, keeps=True),
    # Staff who also own the result may save it as a template; nobody here is both.
    "studio:result_save_template": Rule("POST", everyone(404), data={"name": "x"}, keeps=True),
    # Public catalogue images (no personal data)
    "studio:template_cover": Rule("GET", everyone(200)),
    "studio:style_thumbnail": Rule("GET", everyone(200)),
    # Share links: the shared result only; the before photo only when ticked (not here)
    "studio:share": Rule("GET", everyone(200)),
    "studio:share_image": Rule("GET", everyone(200)),
    "studio:share_before": Rule("GET", everyone(404)),
    # This world's share link does not allow downloads; tests/test_archive.py shares one that does.
    "studio:share_download": Rule("GET", everyone(404)),
    "studio:share_zip": Rule("GET", everyone(404)),
    # A short-lived signed link a vendor fetches the normalized photo by (holder of the link only)
    "studio:signed_media": Rule("GET", everyone(200)),
    # The "finished while you were away" feed: each sees only their own jobs
    "studio:jobs_finished": Rule("GET", everyone((200, 286))),
    # Staff console
    "studio:console:monitor": Rule("GET", staff_only()),
    "studio:console:job": Rule("GET", staff_only()),
    "studio:console:job_retry": Rule("POST", staff_only(OK_OR_REDIRECT), keeps=True),
    "studio:console:vendors": Rule("GET", staff_only()),
    # Vendor callbacks: no login; an unsigned delivery is refused, a bad per-job token is unknown
    "studio:webhook_perfectcorp": Rule("POST", everyone(400), keeps=True),
    "studio:webhook_wavespeed": Rule("POST", everyone(404), keeps=True),
    # For load balancers: no login, nothing personal
    "healthz": Rule("GET", everyone(200)),
}
# Django's admin: every URL is guarded by admin_view (checked for each model below).
ADMIN_NAMESPACE = "admin"


def _walk(patterns, namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            ns = namespace
            if pattern.namespace:
                ns = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
            yield from _walk(pattern.url_patterns, ns)
        elif isinstance(pattern, URLPattern):
            name = pattern.name or f"<unnamed {pattern.pattern}>"
            yield (f"{namespace}:{name}" if namespace else name), namespace


def all_urls() -> list[str]:
    return [
        name for name, namespace in _walk(get_resolver().url_patterns) if namespace.split(":")[0] != ADMIN_NAMESPACE
    ]


@pytest.mark.backend_free
def test_every_url_is_classified():
    names = all_urls()
    unclassified = sorted(set(names) - set(MATRIX))
    assert not unclassified, f"classify these URLs in tests/test_access_matrix.py: {unclassified}"
    stale = sorted(set(MATRIX) - set(names))
    assert not stale, f"these URLs no longer exist; remove them from the matrix: {stale}"


FIXED_KWARGS = {
    "account_confirm_email": {"key": "not-a-real-key"},
    "account_reset_password_from_key": {"uidb36": "1", "key": "not-a-real-key"},
}


# --- The world every rule is checked in -------------------------------------------


@dataclass
class World:
    clients: dict[str, Client]
    photo: Photo
    job: Job
    result: Result
    token: str
    slug: str
    style_id: int

    def kwargs(self, name: str) -> dict:
        if name in FIXED_KWARGS:  # allauth's e-mailed links: an unknown key
            return FIXED_KWARGS[name], reverse(name, kwargs=FIXED_KWARGS[name])
        values = {
            "photo_id": self.photo.pk,
            "job_id": self.job.pk,
            "result_id": self.result.pk,
            "batch": self.job.batch,
            "token": signed_media.photo_token(self.photo.pk) if name == "studio:signed_media" else self.token,
            "slug": self.slug,
            "style_id": self.style_id,
        }
        for attempt in _kwarg_sets(values):
            try:
                return attempt, reverse(name, kwargs=attempt)
            except Exception:  # noqa: BLE001 - try the next combination
                continue
        raise AssertionError(f"cannot build {name}: unknown URL parameters")


def _kwarg_sets(values):
    yield {}
    for key, value in values.items():
        yield {key: value}


def csrf_client() -> Client:
    client = Client(enforce_csrf_checks=True)
    client.get("/privacy/")  # sets the CSRF cookie
    return client


def token_of(client: Client) -> str:
    return client.cookies["csrftoken"].value


@pytest.fixture
def world(portrait_jpeg) -> World:
    owner = csrf_client()
    small = images.to_bytes(images.astronaut(), "JPEG", quality=90)
    from django.core.files.uploadedfile import SimpleUploadedFile

    owner.post(
        "/photos/", {"photo": SimpleUploadedFile("me.jpg", small, "image/jpeg"), "csrfmiddlewaretoken": token_of(owner)}
    )
    photo = Photo.objects.get()
    owner.post(
        "/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch", "csrfmiddlewaretoken": token_of(owner)}
    )
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    Job.objects.filter(pk=job.pk).update(batch=uuid.uuid4())
    job.refresh_from_db()
    result = job.results.get()
    token = share_enable(result=result).token

    from studio.models import Style, StyleGroup, StyleTemplate

    cover = ContentFile(images.to_bytes(images.astronaut(), "JPEG"), name="cover.jpg")
    template = StyleTemplate.objects.create(name="Matrix", slug="matrix", operation="studio_retouch", active=True)
    template.cover.save("cover.jpg", cover, save=True)
    group = StyleGroup.objects.create(provider="perfectcorp", feature="hair-style", group_id="g1", name="Group")
    style = Style.objects.create(group=group, style_id="s1", name="Style")
    style.thumbnail.save("thumb.jpg", ContentFile(images.to_bytes(images.astronaut(), "JPEG")), save=True)

    user = csrf_client()
    user.force_login(User.objects.create_user("someone", password="pw-someone-123"))
    user.get("/privacy/")
    staff = csrf_client()
    staff.force_login(User.objects.create_superuser("boss", password="pw-boss-123456"))
    staff.get("/privacy/")
    return World(
        {"owner": owner, "visitor": csrf_client(), "user": user, "staff": staff},
        photo,
        job,
        result,
        token,
        template.slug,
        style.pk,
    )


def _snapshot():
    return (
        set(Photo.objects.values_list("pk", flat=True)),
        set(Job.objects.values_list("pk", "status")),
        set(Result.objects.values_list("pk", "favourite")),
        set(ShareLink.objects.values_list("pk", "revoked_at")),
    )


def _request(client: Client, method: str, url: str, data: dict, world: World):
    if method == "GET":
        return client.get(url, data)
    payload = {key: str(value).format(photo=world.photo.pk) for key, value in data.items() if key != "_upload"}
    if "_upload" in data:
        from django.core.files.uploadedfile import SimpleUploadedFile

        payload["photo"] = SimpleUploadedFile("x.jpg", images.to_bytes(images.astronaut(), "JPEG"), "image/jpeg")
    payload["csrfmiddlewaretoken"] = token_of(client)
    return client.post(url, payload)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_access(world, name):
    rule = MATRIX[name]
    _, url = world.kwargs(name)
    before = _snapshot()
    for role in ROLES:
        client = world.clients[role]
        if role == "owner" and rule.keeps:
            assert _snapshot() == before, f"{name}: an outsider's request changed the owner's work"
        response = _request(client, rule.method, url, rule.data, world)
        expected = rule.expect[role]
        expected = expected if isinstance(expected, tuple) else (expected,)
        # Images on S3 are a redirect to a signed URL: what counts is what the browser gets there.
        status = fetch(response).status if rule.method == "GET" else response.status_code
        assert status in expected, f"{name} as {role}: {status}, expected {expected}"
        if response.status_code == 302 and rule.expect[role] == 302 and name.startswith("studio:console"):
            assert "/admin/login/" in response["Location"]

    if rule.other_method is not None:
        wrong = "POST" if rule.method == "GET" else "GET"
        client = world.clients["staff"]
        response = _request(client, wrong, url, {}, world)
        assert response.status_code in (rule.other_method, 404, 302), f"{name} with {wrong}: {response.status_code}"
        if name.startswith("studio:") and not name.startswith("studio:console"):
            assert response.status_code == rule.other_method, f"{name} with {wrong}: {response.status_code}"


# Vendor callbacks come from servers, not browsers: they are CSRF-exempt and authenticated by
# their signature or per-job token instead (tests/test_webhooks.py).
@pytest.mark.parametrize(
    "name", sorted(n for n, rule in MATRIX.items() if rule.method == "POST" and not n.startswith("studio:webhook_"))
)
def test_every_state_change_needs_the_csrf_token(world, name):
    """Including htmx requests: they carry the token in the X-CSRFToken header (base.html)."""
    _, url = world.kwargs(name)
    owner = world.clients["owner"]
    before = _snapshot()
    assert owner.post(url, {"enabled": "1"}).status_code == 403
    assert owner.post(url, {"enabled": "1"}, headers={"HX-Request": "true"}).status_code == 403
    assert _snapshot() == before


def test_htmx_requests_carry_the_token_from_the_page(world):
    owner = world.clients["owner"]
    page = owner.get("/").content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in page
    token = page.split('"X-CSRFToken": "', 1)[1].split('"', 1)[0]
    response = owner.post(
        f"/results/{world.result.pk}/share", {"enabled": "1"}, headers={"HX-Request": "true", "X-CSRFToken": token}
    )
    assert response.status_code == 200


def test_gallery_and_pages_show_only_ones_own_work(world):
    marker = str(world.job.pk)
    assert marker in world.clients["owner"].get("/gallery/").content.decode()
    for role in OUTSIDERS:
        for url in ("/gallery/", "/", "/privacy/"):
            assert marker not in world.clients[role].get(url).content.decode(), (role, url)
        assert str(world.photo.pk) not in world.clients[role].get("/").content.decode()


def test_the_admin_is_for_staff_only(world):
    """Every registered model's admin pages: staff get them, everyone else the admin login."""
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
    for model in (Photo, Job, Result):
        obj = model.objects.first()
        urls.append(reverse(f"admin:studio_{model._meta.model_name}_change", args=[obj.pk]))
    for url in urls:
        assert world.clients["staff"].get(url).status_code == 200, url
        for role in ("owner", "visitor", "user"):
            response = world.clients[role].get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], (role, url)
