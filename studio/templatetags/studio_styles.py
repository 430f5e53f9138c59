"""The style picker reads its catalogue from our database (studio.styles), never from a vendor."""

from django import template

from studio import styles

register = template.Library()


@register.simple_tag
def style_groups(op, param):
    """Visible groups of this style parameter's catalogue, each with `.offered_styles`."""
    return styles.offered_groups(op.provider, param.catalogue)


@register.filter
def as_id_list(value):
    """The picked style ids as a list of strings (one id, several, or none)."""
    if value in (None, ""):
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return [str(value)]


@register.filter
def has_param(op, name):
    """Whether the operation declares a parameter of this name."""
    return any(param.name == name for param in op.params)


@register.filter
def job_style(job):
    """The catalogue style a job ran with (for its card), or None."""
    return styles.style_of_job(job)
