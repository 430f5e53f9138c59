"""Accounts: django-allauth does sign-up, log-in, verification and password reset; this is our side of it.

The adapter makes allauth count log-in attempts per client address the way
our own abuse limits do (studio.limits.client_address, which knows about the
TLS proxy), and says in our words what a locked-out person should do.
"""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress

from studio import limits

LOCKED_OUT = (
    "Too many failed log-in attempts. Wait five minutes and try again, "
    "or reset your password (\"Forgot your password?\" below the password field)."
)


class AccountAdapter(DefaultAccountAdapter):
    error_messages = {
        **DefaultAccountAdapter.error_messages,
        "too_many_login_attempts": LOCKED_OUT,
        "invalid_login": "That e-mail address and password do not match an account.",
        "email_password_mismatch": "That e-mail address and password do not match an account.",
    }

    def get_client_ip(self, request) -> str:
        return limits.client_address(request)


def verified_email(user) -> str:
    """The user's verified primary address, or "" (none yet, or anonymous)."""
    if not getattr(user, "is_authenticated", False):
        return ""
    address = EmailAddress.objects.filter(user=user, verified=True).order_by("-primary").first()
    return address.email if address else ""


def user_display(user) -> str:
    """How allauth names a user in its messages: by the address they log in with."""
    return user.email or user.get_username()
