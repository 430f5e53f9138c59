from django import template

register = template.Library()


@register.filter
def get_item(mapping, key):
    """mapping[key] in a template, or None."""
    if not mapping:
        return None
    return mapping.get(key)


@register.filter
def seconds(value):
    """A duration in seconds as "3.2 s" or "1 min 5 s"."""
    if value is None:
        return ""
    value = float(value)
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


@register.filter
def card_version(job):
    """The version of a job card's changing part, sent back by its poll (views.job_status)."""
    from studio.selectors import card_version as version

    return version(job.status, job.stage, job.progress)
