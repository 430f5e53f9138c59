"""The real URLs plus /bench/trivial: the cheapest answer Django gives on the same server."""

from django.http import HttpResponse
from django.urls import include, path


def trivial(request):
    return HttpResponse("ok")


urlpatterns = [
    path("bench/trivial", trivial),
    path("", include("portraitstudio.urls")),
]
