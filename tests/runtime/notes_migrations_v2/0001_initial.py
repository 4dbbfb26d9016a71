"""apps.notes' own first migration, unchanged (this package only adds 0002)."""

from importlib import import_module

Migration = import_module("apps.notes.migrations.0001_initial").Migration
