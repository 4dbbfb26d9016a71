"""{% supervisor_dashboard %}: the admin index's summary (apps.supervisor.selectors.dashboard)."""

from django import template

from apps.supervisor import selectors

register = template.Library()


@register.inclusion_tag("admin/supervisor/dashboard.html", takes_context=True)
def supervisor_dashboard(context):
    request = context["request"]
    # Sub-apps' admin sites share the template: only the supervisor's own shows the summary.
    if getattr(request, "current_app", None) != "admin" or not request.user.has_perm(
        "supervisor.view_application"
    ):
        return {"show": False}
    return {"show": True, **selectors.dashboard()}
