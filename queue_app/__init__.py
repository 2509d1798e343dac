"""The queue core: settings, records and state machine, the Redis store, the Celery app and its
routing, the broker patch, admission, logs, notifications and process spawning. It knows nothing
of the command line (import-linter holds it to that)."""
