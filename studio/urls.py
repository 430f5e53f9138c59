from django.urls import include, path

from studio import views, views_compare, views_webhooks
from studio import notifications

from studio import signed_media  # the signed photo links for vendors (Vtrix)

app_name = "studio"

urlpatterns = [
    path("", views.home, name="home"),
    path("photos/", views.photo_upload, name="photo_upload"),
    path("photos/<uuid:photo_id>/image", views.photo_image, name="photo_image"),
    path("photos/<uuid:photo_id>/delete", views.photo_delete, name="photo_delete"),
    path("jobs/", views.job_create, name="job_create"),
    path("jobs/finished", notifications.finished_feed, name="jobs_finished"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/status", views.job_status, name="job_status"),
    path("jobs/<uuid:job_id>/delete", views.job_delete, name="job_delete"),
    path("jobs/<uuid:job_id>/rerun", views.job_rerun, name="job_rerun"),
    path("gallery/", views.gallery, name="gallery"),
    path("gallery/download.zip", views.gallery_zip, name="gallery_zip"),
    path("results/<uuid:result_id>/", views.result_detail, name="result"),
    path("results/<uuid:result_id>/image", views.result_image, name="result_image"),
    path("results/<uuid:result_id>/download", views.result_download, name="result_download"),
    path("results/<uuid:result_id>/print-sheet", views.result_print_sheet, name="result_print_sheet"),
    path("results/<uuid:result_id>/export", views.result_export, name="result_export"),
    path("results/<uuid:result_id>/favourite", views.result_favourite, name="result_favourite"),
    path("results/<uuid:result_id>/delete", views.result_delete, name="result_delete"),
    path("results/<uuid:result_id>/chain", views.result_chain, name="result_chain"),
    path("results/<uuid:result_id>/share", views.result_share, name="result_share"),
    # Style templates, seeds and comparisons (views_compare.py)
    path("compare/<uuid:batch>/", views_compare.compare, name="compare"),
    path("compare/<uuid:batch>/download.zip", views.batch_zip, name="batch_zip"),
    path("results/<uuid:result_id>/reseed", views_compare.result_reseed, name="result_reseed"),
    path("results/<uuid:result_id>/save-template", views_compare.result_save_template, name="result_save_template"),
    path("templates/<slug:slug>/cover", views_compare.template_cover, name="template_cover"),
    path("privacy/", views.privacy, name="privacy"),
    path("privacy/delete-everything", views.delete_everything, name="delete_everything"),
    path("privacy/delete-account", views.account_delete, name="account_delete"),
    path("staff/", include("studio.console.urls")),
    path("styles/<int:style_id>/thumbnail", views.style_thumbnail, name="style_thumbnail"),
    # A photo for a vendor that fetches by URL (Vtrix): signed, minutes-long, nothing else.
    path("v/<str:token>/", signed_media.signed_photo, name="signed_media"),
    # Vendors' callbacks when a task ends: they wake the job, which then polls (views_webhooks.py).
    path("webhooks/perfectcorp/", views_webhooks.perfectcorp, name="webhook_perfectcorp"),
    path("webhooks/wavespeed/<str:token>/", views_webhooks.wavespeed, name="webhook_wavespeed"),
    path("s/<str:token>", views.share_page, name="share"),
    path("s/<str:token>/image", views.share_image, name="share_image"),
    path("s/<str:token>/before", views.share_before_image, name="share_before"),
    path("s/<str:token>/download", views.share_download, name="share_download"),
    path("s/<str:token>/download.zip", views.share_zip, name="share_zip"),
]
