"""Operator scripts: drain the queue, tear down the fleet, status."""
