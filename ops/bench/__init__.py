"""The queue benchmark (`saefleet bench queue`): plain Celery vs saefleet's stage machinery."""
