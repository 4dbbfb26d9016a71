"""Tell live listeners of this app when its notes change."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.notes.consumers import group_for
from apps.notes.models import Note
from apps.runtime.routing import current_app_alias


@receiver([post_save, post_delete], sender=Note)
def notes_changed(sender, **kwargs) -> None:
    alias = current_app_alias.get()
    layer = get_channel_layer()
    if alias and layer is not None:
        # After commit: listeners count the notes on their own connection.
        transaction.on_commit(
            lambda: async_to_sync(layer.group_send)(group_for(alias), {"type": "notes.changed"}),
            using=alias,
        )
