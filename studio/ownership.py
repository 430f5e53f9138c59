"""Who owns what: a signed-in user, or an anonymous visitor through the session.

Anonymous visitors get a random visitor id kept in their session. When they
sign up or log in, everything made under that id moves to the account
(owner_adopt_visitor_work, on the log-in signal in signals.py), so no work is lost.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db.models import Q

from studio.models import Job, Photo

VISITOR_SESSION_KEY = "studio_visitor_id"


@dataclass(frozen=True)
class Owner:
    user_id: int | None = None
    visitor_id: str = ""

    def q(self, prefix: str = "") -> Q:
        """A filter matching rows owned by this owner (fields under `prefix`)."""
        if self.user_id is not None:
            return Q(**{f"{prefix}owner_user_id": self.user_id})
        if not self.visitor_id:
            return Q(pk__in=[])  # owns nothing yet
        return Q(**{f"{prefix}owner_user__isnull": True, f"{prefix}owner_visitor": self.visitor_id})

    def fields(self) -> dict:
        """Values for the owner fields of a new row."""
        if self.user_id is not None:
            return {"owner_user_id": self.user_id, "owner_visitor": ""}
        return {"owner_user_id": None, "owner_visitor": self.visitor_id}


def visitor_id(request, *, create: bool) -> str:
    value = request.session.get(VISITOR_SESSION_KEY, "")
    if not value and create:
        value = secrets.token_urlsafe(24)
        request.session[VISITOR_SESSION_KEY] = value
    return value


def claimed_user_id(request):
    """The user id this session says it is signed in as (not yet checked), or None."""
    from django.contrib.auth import SESSION_KEY

    return request.session.get(SESSION_KEY)


def session_signed_in_as(request, user) -> bool:
    """Whether the session is signed in as `user`, by the checks django.contrib.auth.get_user makes.

    For a view that reads the user together with the row it needs (one query
    instead of two). Only a clean match counts: a backend that loads users
    its own way, an inactive user or a session hash made with an old secret
    or password all answer False, and the caller falls back to request.user,
    where Django's own check decides (and flushes a stale session).
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, load_backend
    from django.contrib.auth.backends import ModelBackend
    from django.utils.crypto import constant_time_compare

    backend_path = request.session.get(BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    backend = load_backend(backend_path)
    if type(backend).get_user is not ModelBackend.get_user or not backend.user_can_authenticate(user):
        return False
    session_hash = request.session.get(HASH_SESSION_KEY) or ""
    return bool(session_hash) and constant_time_compare(session_hash, user.get_session_auth_hash())


def owner_for(request, *, create: bool = False) -> Owner:
    """The owner behind this request; `create` starts a visitor identity if needed."""
    if request.user.is_authenticated:
        return Owner(user_id=request.user.pk)
    return Owner(visitor_id=visitor_id(request, create=create))


def owner_adopt_visitor_work(*, user, visitor_id: str) -> int:
    """On sign-up or log-in, move a visitor's photos and jobs to the account."""
    if not visitor_id:
        return 0
    moved = 0
    for model in (Photo, Job):
        moved += model.objects.filter(owner_user__isnull=True, owner_visitor=visitor_id).update(
            owner_user=user, owner_visitor=""
        )
    return moved
