from django import template

from console.dashboard import dashboard_tiles

register = template.Library()


@register.simple_tag(takes_context=True)
def operator_dashboard(context):
    """The tiles the requesting operator may follow (see dashboard_tiles)."""
    return dashboard_tiles(context["request"])
