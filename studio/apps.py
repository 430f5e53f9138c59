from django.apps import AppConfig


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Portrait Studio"

    def ready(self):
        from studio import signals  # noqa: F401  (connects the handlers)
