"""Sweep specs, providers, the SSH layer, the lifecycle-stage tasks and their canvas, the planner,
preflight and submission."""
