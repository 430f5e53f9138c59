"""Template helpers for style templates, seeds, comparisons and the NSFW gate."""

from __future__ import annotations

import json

from django import template
from django.template.loader import render_to_string

from studio.vendors.base import PROVIDERS, get_provider

register = template.Library()


@register.filter
def getlist(querydict, key):
    """All submitted values of a field (e.g. the picked template cards)."""
    return querydict.getlist(key) if hasattr(querydict, "getlist") else []


@register.filter
def as_json(value):
    return json.dumps(value, sort_keys=True)


@register.filter
def provider_label(key):
    return get_provider(key).label if key in PROVIDERS else key


@register.filter
def op_param(op, name):
    """The operation's parameter called `name`, or None."""
    return next((param for param in getattr(op, "params", ()) if param.name == name), None)


@register.filter
def seed_of(result):
    """The seed a result was made with (reported by the vendor), else the job's seed."""
    seed = (result.meta or {}).get("seed")
    if seed in (None, ""):
        seed = (result.job.params or {}).get("seed")
    return None if seed in (None, "", -1) else seed


@register.tag
def nsfwgate(parser, token):
    """{% nsfwgate result %}…{% endnsfwgate %}: the content, behind "show anyway" when flagged."""
    bits = token.split_contents()
    if len(bits) != 2:
        raise template.TemplateSyntaxError("nsfwgate takes one argument: the result")
    nodelist = parser.parse(("endnsfwgate",))
    parser.delete_first_token()
    return NsfwGateNode(parser.compile_filter(bits[1]), nodelist)


class NsfwGateNode(template.Node):
    def __init__(self, result, nodelist):
        self.result = result
        self.nodelist = nodelist

    def render(self, context):
        result = self.result.resolve(context)
        content = self.nodelist.render(context)
        if not (result is not None and (getattr(result, "meta", None) or {}).get("nsfw")):
            return content
        return render_to_string("studio/partials/nsfw.html", {"content": content, "result": result})
