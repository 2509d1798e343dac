"""The control plane: Celery app, routing, state store, canvas builders and the CLI."""
