"""The GPU-side worker's watch for interruption notices (the provider's side is
jobs.providers.notice).

Bootstrap hands the worker its provider's `NoticeChannel` (`SAEFLEET_NOTICE_CHANNEL`, JSON;
none for providers that give no notice). The worker's warm-up (or else its first training
segment) starts a `NoticeWatch` on it: a daemon thread that reads the channel every `poll_s`
and acts once on each new notice:

- an interruption moves the job TRAINING -> PREEMPTING (jobs.supervise starts the next attempt
  at once and jobs.notice_handoff hands it the checkpoint the segment writes on stopping), and
  stops the segment;
- a rebalance recommendation only stops the segment: its checkpoint is pulled as every
  segment's is and the next segment goes on on the same instance (one extra checkpoint);
- an interruption while bootstrap still runs moves the job BOOTSTRAPPING -> PREEMPTED (nothing
  was trained, so nothing is handed off) and bootstrap resumes it as the next attempt.

The segment stops through `RunControl.should_stop` (jobs.training_task), which asks
`stop_for_notice()` at every step: the trainer finishes its step, writes a checkpoint, returns.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from jobs.providers.notice import Notice, NoticeChannel, NoticeKind, NoticeSource
from jobs.providers.notice import open_notice_source as open_source
from queue_app.errors import IllegalTransition, StaleAttempt
from queue_app.statemachine import JobState
from queue_app.store import Store

log = logging.getLogger(__name__)

CHANNEL_ENV = "SAEFLEET_NOTICE_CHANNEL"

_stop_segment = threading.Event()
_watches: dict[tuple[str, int], NoticeWatch] = {}


class NoticeWatch:
    """Reads `source` every `poll_s` seconds in a daemon thread and calls `on_notice` once for
    each notice not seen before; a notice whose handler raised is handled again next time."""

    def __init__(
        self, source: NoticeSource, poll_s: float, on_notice: Callable[[Notice], None]
    ) -> None:
        self.source, self.poll_s, self.on_notice = source, poll_s, on_notice
        self._seen: set[Notice] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notice-watch", daemon=True)

    def start(self) -> NoticeWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 5)

    def poll_once(self) -> list[Notice]:
        """Read the source once; returns the new notices it handled."""
        handled = []
        for notice in self.source.poll():
            if notice in self._seen:
                continue
            try:
                self.on_notice(notice)
            except Exception:
                log.exception("acting on %s failed; trying again at the next poll", notice)
                continue
            self._seen.add(notice)
            handled.append(notice)
        return handled

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.poll_once()
            self._stopped.wait(self.poll_s)


def watch_notices(store: Store, job_id: str, attempt: int) -> None:
    """Start this process's watch for `job_id`'s `attempt` unless it runs already (or the
    provider gives no notice); a new segment forgets a rebalance stop meant for the last one."""
    _stop_segment.clear()
    raw = os.environ.get(CHANNEL_ENV)
    if not raw or (job_id, attempt) in _watches:
        return
    for watch in _watches.values():  # one job per instance: anything older is over
        watch.stop()
    _watches.clear()
    channel = NoticeChannel.model_validate_json(raw)
    act = lambda notice: act_on_notice(store, job_id, attempt, notice)  # noqa: E731
    _watches[(job_id, attempt)] = NoticeWatch(open_source(channel), channel.poll_s, act).start()
    log.info("watching for interruption notices (%s, every %.1fs)", channel.kind, channel.poll_s)


def stop_for_notice() -> bool:
    """A notice asks the running segment to stop (read by RunControl at every step)."""
    return _stop_segment.is_set()


def act_on_notice(store: Store, job_id: str, attempt: int, notice: Notice) -> None:
    """Record an interruption as PREEMPTING and stop the segment (see the module docstring).
    Redis errors propagate, so the watch tries again at its next poll."""
    log.warning("%s for attempt %d of %s", notice.describe(), attempt, job_id)
    job = store.job(job_id)
    if notice.kind is NoticeKind.INTERRUPTION and job.state is JobState.BOOTSTRAPPING:
        if job.attempt == attempt:
            _preempt_before_training(store, job.job_id, attempt, job.preemptions, notice)
        return
    if notice.kind is NoticeKind.INTERRUPTION:
        reason = f"{notice.describe()}: checkpointing now, the next attempt starts at once"
        try:
            store.transition(job_id, attempt, JobState.PREEMPTING, reason=reason, allow_same=True)
        except (StaleAttempt, IllegalTransition) as exc:
            log.info("not preempting on notice, the job moved on: %s", exc)
            return
    _stop_segment.set()


def _preempt_before_training(
    store: Store, job_id: str, attempt: int, preemptions: int, notice: Notice
) -> None:
    """A notice while bootstrap still runs (the worker is up, no segment yet): there is nothing
    to hand off (the checkpoint to resume from is still the newest in the store), so the job
    is PREEMPTED now and bootstrap resumes it as the next attempt at its next look."""
    reason = f"{notice.describe()} before training: the next attempt starts now"
    try:
        store.transition(
            job_id, attempt, JobState.PREEMPTED, reason=reason, preemptions=preemptions + 1
        )
    except (StaleAttempt, IllegalTransition) as exc:
        log.info("not preempting on notice, the job moved on: %s", exc)
