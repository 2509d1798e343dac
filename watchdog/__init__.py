"""The beat schedule and its checks: costs, liveness, interruptions, orphans, stuck jobs."""
