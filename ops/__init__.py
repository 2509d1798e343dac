"""Everything a person types: the `saefleet` CLI, status views, the demo, reports, Flower, the
control-plane services, drain, teardown and the queue benchmark."""
