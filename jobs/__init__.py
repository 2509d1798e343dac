"""Lifecycle-stage tasks, providers, the SSH layer and sweep specs."""
