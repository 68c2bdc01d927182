from django import template

from console.dashboard import dashboard_tiles

register = template.Library()


@register.simple_tag
def operator_dashboard():
    return dashboard_tiles()
