from django import template

from console.dashboard import dashboard_charts, dashboard_tiles

register = template.Library()


@register.simple_tag(takes_context=True)
def operator_dashboard(context):
    """The tiles the requesting operator may follow (see dashboard_tiles)."""
    return dashboard_tiles(context["request"])


@register.simple_tag(takes_context=True)
def operator_charts(context):
    """The charts over the lists the requesting operator may open (see dashboard_charts)."""
    return dashboard_charts(context["request"])
