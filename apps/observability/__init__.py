"""Health, metrics and structured logs: /healthz, /readyz, /metrics, log context.

Kept free of import-time Django work: settings.py imports logconfig from here to build
LOGGING before Django is set up.
"""
