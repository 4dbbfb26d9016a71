"""apps.notes' migrations plus one more: a TENANT_APPS module that gained a migration."""
