from django.contrib import admin
from django.urls import include, path

from studio.health import healthz

urlpatterns = [
    # For load balancers: database, cache and media storage reachable? (200 or 503, JSON)
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Sign-up, log-in, e-mail verification, password reset and change (django-allauth).
    path("accounts/", include("allauth.account.urls")),
    path("", include("studio.urls")),
]
