"""Registered on every sub-application's admin site (not the supervisor's)."""

from django.contrib import admin

from apps.notes.models import Note
from apps.runtime.tenant_admin import site


@admin.register(Note, site=site)
class NoteAdmin(admin.ModelAdmin):
    list_display = ["title", "pinned", "updated_at"]
    list_filter = ["pinned"]
    search_fields = ["title", "body"]
