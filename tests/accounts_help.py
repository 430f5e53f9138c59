"""Helpers for tests of accounts: verified users, links from the e-mails the SMTP server received."""

from __future__ import annotations

import re

from allauth.account.models import EmailAddress
from django.contrib.auth.models import User

from tests.smtp import Inbox, links_in


def verified_user(email: str, password: str, **extra) -> User:
    """A user who signed up and confirmed the address (as allauth would have stored it)."""
    username = re.sub(r"\W", "", email.split("@")[0]) or "user"
    user = User.objects.create_user(username, email=email, password=password, **extra)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def confirmation_link(inbox: Inbox, email: str, *, nth: int = 0) -> str:
    """The path of the confirmation link in the nth e-mail to `email`."""
    message = inbox.wait_for(email, nth + 1)[nth]
    links = [link for link in links_in(message) if "/accounts/confirm-email/" in link]
    assert links, f"no confirmation link in: {message}"
    return path_of(links[0])


def reset_link(inbox: Inbox, email: str, *, nth: int = 0) -> str:
    message = inbox.wait_for(email, nth + 1)[nth]
    links = [link for link in links_in(message) if "/accounts/password/reset/key/" in link]
    assert links, f"no password reset link in: {message}"
    return path_of(links[0])
