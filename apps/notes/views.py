"""A live page of the example module: the note count, pushed over a websocket."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from apps.notes.models import Note


@staff_member_required(login_url="tenant_admin:login")
def live(request):
    return render(
        request, "notes/live.html", {"count": Note.objects.count(), "app": request.sub_app}
    )
