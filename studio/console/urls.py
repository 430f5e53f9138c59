from django.urls import path

from studio.console import views

app_name = "console"

urlpatterns = [
    path("", views.monitor, name="monitor"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/retry", views.job_retry, name="job_retry"),
    path("vendors/", views.vendors, name="vendors"),
]
