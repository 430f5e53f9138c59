from django.conf import settings


def studio(request):
    return {"STUDIO_SANDBOX": settings.STUDIO_SANDBOX}
