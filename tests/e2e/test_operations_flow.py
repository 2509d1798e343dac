"""One real sweep watched from every operator angle: drained while a training segment is in
flight (the segment checkpoints at its next step, the checkpoint is pulled, the job waits PAUSED
with its instance terminated, nothing else starts, submissions are refused, a restarted worker
stays drained), resumed with --undo (the job resumes as attempt 2 from its checkpoint and
completes, the finalizer runs once), and seen through `status --json`, `logs`, `sweep report` and
the webhook.

The run carries known fake secrets (an HF token, a Lambda key, the webhook URL, the Redis
password); Redis is sampled all along (queued task messages decoded) and, with the log files,
every command's output and every webhook payload, scanned for them afterwards.

The flow runs once per module (it takes a minute or two); each test asserts on what it saw.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.pipeline import stage_task_name
from queue_app.celery_app import CONTROL_QUEUE, WATCHDOG_QUEUE
from queue_app.processes import free_port
from queue_app.records import JobRecord, SweepRecord
from queue_app.statemachine import INSTANCE_STATES, JobState
from tests.e2e.harness import ControlPlane, control_plane, decoded_bodies, queued_messages
from tests.support.servers import TEST_PASSWORD, require_sshd
from tests.support.sweeps import write_sweep
from tests.support.waiting import wait_for
from tests.support.webhook import running_webhook

# The flow runs once per module: its tests stay together on one pytest-xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("operations_flow")]

FLOW_TOKENS, FLOW_BATCH_TOKENS = 131_072, 512  # the tiny job trains 512 tokens a step
SUPERVISE = stage_task_name("supervise_training")
WEBHOOK_TOKEN = "xoxFAKEwebhookToken0123456789"
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FakeHuggingFaceToken0123456789abcd",
    "LAMBDA_API_KEY": "secret_fleet-test_0123456789abcdef.FAKEFAKEFAKE",
    "webhook token": WEBHOOK_TOKEN,
    "redis password": TEST_PASSWORD,
}


@dataclass
class RedisSampler:
    """Every distinct key and value seen in Redis while the flow ran (kombu message bodies
    decoded), sampled from a background thread."""

    url: str
    seen: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        while not self.stop.wait(0.3):
            self.sample(client)
        self.sample(client)

    def sample(self, client: redis.Redis) -> None:
        for key in client.scan_iter(count=1000):
            self.seen.add(key)
            kind = client.type(key)
            values: list[str] = []
            if kind == "string":
                values = [client.get(key) or ""]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "hash":
                values = [f"{k}={v}" for k, v in client.hgetall(key).items()]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = list(client.zrange(key, 0, -1))
            for value in values:
                self.seen.add(value)
                self.seen.update(decoded_bodies(value))


@dataclass
class Flow:
    """What the flow saw (assertions happen in the tests)."""

    home: Path
    sweep_id: str = ""
    job_id: str = ""
    drain: dict[str, Any] = field(default_factory=dict)
    segment_when_drained: tuple[int, str | None] = (0, None)
    segment_after_wait: tuple[int, str | None] = (0, None)
    segment_later: tuple[int, str | None, str] = (0, None, "")
    paused: JobRecord | None = None
    attempts_resumed_from: list[str | None] = field(default_factory=list)
    instances_when_drained: list[str] = field(default_factory=list)
    refused: subprocess.CompletedProcess[str] | None = None
    status_after_restart: dict[str, Any] = field(default_factory=dict)
    status_json: dict[str, Any] = field(default_factory=dict)
    undo: dict[str, Any] = field(default_factory=dict)
    sweep: SweepRecord | None = None
    jobs: list[JobRecord] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    webhook: list[Any] = field(default_factory=list)
    redis_seen: set[str] = field(default_factory=set)


def json_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"{proc.args[3:]} exited {proc.returncode}: {proc.stdout}"
    return dict(json.loads(proc.stdout))


def segment(plane: ControlPlane, job_id: str) -> tuple[int, str | None]:
    attempt = plane.store.attempt(job_id, plane.store.job(job_id).attempt)
    return attempt.segment, attempt.segment_status


def training_after_a_segment(plane: ControlPlane, job_id: str) -> bool:
    """A segment after the first trains in the first half of the run (fails at once if the job
    got past that)."""
    job = plane.store.job(job_id)
    step, steps = int(job.progress.get("step", 0)), FLOW_TOKENS // FLOW_BATCH_TOKENS
    assert job.state in (JobState.QUEUED, *INSTANCE_STATES), f"{job_id} finished training first"
    assert step < steps // 2, f"{job_id} trained {step} of {steps} steps before a segment ran"
    number, status = segment(plane, job_id)
    return number >= 2 and status == "running"


def next_poll_queued(plane: ControlPlane, job_id: str) -> bool:
    """supervise_training's next poll of the job waits in the control queue, undelivered."""
    polls = [m for m in queued_messages(plane.store.r, CONTROL_QUEUE) if SUPERVISE in m]
    return any(job_id in m for m in polls)


@pytest.fixture(scope="module")
def flow(
    redis_server: str, fleet_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flow]:
    require_sshd()
    redis.Redis.from_url(redis_server).flushall()
    home = tmp_path_factory.mktemp("flow") / "home"
    home.mkdir()
    seen = Flow(home)
    sampler = RedisSampler(redis_server)
    thread = threading.Thread(target=sampler.run, daemon=True)
    with running_webhook(WEBHOOK_TOKEN) as hook, control_plane(home, redis_server) as plane:
        plane.env.update(
            {
                "HF_TOKEN": FAKE_SECRETS["HF_TOKEN"],
                "LAMBDA_API_KEY": FAKE_SECRETS["LAMBDA_API_KEY"],
                "SAEFLEET_LAMBDA_BASE_URL": f"http://127.0.0.1:{free_port()}/api/v1",
                "SAEFLEET_WEBHOOK_URL": hook.url,
            }
        )
        thread.start()
        try:
            drive(plane, seen, fleet_assets)
            wait_for("the sweep-finished notification", hook.bodies, 30)
            seen.webhook = hook.bodies()
        finally:
            sampler.stop.set()
            thread.join(timeout=10)
    seen.redis_seen = sampler.seen
    yield seen


def drive(plane: ControlPlane, seen: Flow, assets: dict[str, Path]) -> None:
    plane.start_control()
    plane.start_tunnels()
    # Eight times the tiny job's tokens in 0.6-second segments; drain while a segment after the
    # first trains in the first half of the run (so the job has trained steps and has more to
    # train however fast the machine is): it checkpoints at its next step, nothing after it.
    sweep_file = write_sweep(
        seen.home.parent,
        assets,
        name="opsflow",
        segment_minutes=0.01,
        **{"train.total_tokens": FLOW_TOKENS},
    )
    seen.sweep_id = plane.submit(sweep_file)
    [seen.job_id] = plane.store.sweep(seen.sweep_id).job_ids
    job_id = seen.job_id
    wait_for("a second segment to train", lambda: training_after_a_segment(plane, job_id), 240)
    seen.drain = json_of(plane.run("queue", "drain", "--wait", "120", "--json"))
    seen.segment_after_wait = segment(plane, job_id)
    seen.paused = plane.store.job(job_id)
    seen.instances_when_drained = plane.running_instances()
    seen.refused = plane.run("sweep", "submit", str(sweep_file))
    plane.stop("control")
    plane.start_control()
    # Undrained, the restarted worker would take supervise's next poll at once and resume the job.
    wait_for("the next poll held in its queue", lambda: next_poll_queued(plane, job_id), 120)
    number, status = segment(plane, job_id)
    seen.segment_later = (number, status, str(plane.store.job(job_id).state))
    seen.status_after_restart = json_of(plane.run("queue", "drain", "--status", "--json"))
    seen.status_json = json_of(plane.run("status", "--json"))
    paused_logs = plane.run("logs", job_id, "-n", "200")  # kept when the job was paused
    seen.outputs["logs (paused)"] = paused_logs.stdout + paused_logs.stderr
    seen.undo = json_of(plane.run("queue", "drain", "--undo", "--json"))
    seen.sweep = plane.wait_sweep(seen.sweep_id, timeout_s=240)
    seen.jobs = plane.store.sweep_jobs(seen.sweep_id)
    seen.attempts_resumed_from = [a.resume_from for a in plane.store.attempts(job_id)]
    for name, args in {
        "logs": ("logs", job_id),
        "report": ("sweep", "report", seen.sweep_id, "--format", "md"),
        "status --all": ("status", "--all", "--json"),
        "job show": ("job", "show", job_id, "--json"),
        "fleet list": ("fleet", "list", "--all", "--json"),
    }.items():
        proc = plane.run(*args)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        seen.outputs[name] = proc.stdout + proc.stderr
    seen.outputs["drain"] = json.dumps(seen.drain)
    seen.outputs["drain --status"] = json.dumps(seen.status_after_restart)


# ---- drain --------------------------------------------------------------------------------------


def test_drain_keeps_the_segment_in_flight_releases_the_instance_and_starts_nothing(
    flow: Flow,
) -> None:
    assert flow.drain["ok"], flow.drain
    steps = {s["name"]: s for s in flow.drain["steps"]}
    assert steps["nothing bills"]["detail"] == "every job paused or waiting at no cost"
    number, status = flow.segment_after_wait
    assert number >= 1 and status in ("done", "sent")  # stopped and checkpointed, or not begun
    assert flow.paused is not None and flow.paused.state is JobState.PAUSED
    assert flow.paused.latest_checkpoint and flow.paused.preemptions == 0
    assert flow.instances_when_drained == []
    assert flow.segment_later == (number, status, "PAUSED")  # nothing new while drained


def test_submission_is_refused_while_drained(flow: Flow) -> None:
    assert flow.refused is not None
    assert flow.refused.returncode == 1
    assert "drained" in flow.refused.stderr and "--undo" in flow.refused.stderr


def test_pending_work_stays_queued_and_a_restarted_worker_holds(flow: Flow) -> None:
    status = flow.status_after_restart["status"]
    assert status["drained"]["by"] == "drain"
    [(node, worker)] = [(n, w) for n, w in status["workers"].items() if n.startswith("control-")]
    assert worker["queues"] == [WATCHDOG_QUEUE], node  # restarted during the drain: held
    assert status["pending"][CONTROL_QUEUE] >= 1  # supervise_training's next poll waits in Redis
    assert [(j["state"], j["checkpoint"]) for j in status["jobs"]] == [
        ("PAUSED", flow.paused.latest_checkpoint if flow.paused else None)
    ]


def test_undo_completes_every_job_and_finalizes_once(flow: Flow) -> None:
    assert flow.undo["ok"], flow.undo
    assert flow.sweep is not None and flow.sweep.finalize_runs == 1
    assert [j.state for j in flow.jobs] == [JobState.SUCCEEDED]
    [job] = flow.jobs
    assert job.attempt == 2 and job.preemptions == 0 and job.metrics
    assert flow.paused is not None
    assert flow.attempts_resumed_from == [None, flow.paused.latest_checkpoint]


# ---- views --------------------------------------------------------------------------------------


def test_status_json_while_drained(flow: Flow) -> None:
    [sweep] = flow.status_json["sweeps"]
    [job] = sweep["jobs"]
    assert job["state"] == "PAUSED" and job["attempt"] == 1
    assert job["instance_id"] and job["step"] > 0 and job["tokens"] > 0
    assert job["loss"] is not None and job["l0"] is not None
    assert flow.status_json["fleet"]["by_state"].get("LAUNCHED", 0) == 0


@pytest.mark.parametrize("when", ["logs (paused)", "logs"])
def test_logs_show_control_records_and_the_worker_log(flow: Flow, when: str) -> None:
    """The paused attempt's worker log was copied to the store before its instance went."""
    text = flow.outputs[when]
    assert "control INFO jobs.supervise: sent training segment 1" in text
    worker_lines = [line for line in text.splitlines() if line.startswith("worker a1 local-")]
    assert any("segment 1 done" in line for line in worker_lines), text[-3000:]
    assert "cannot read the worker log" not in text and "no copy of this worker log" not in text


def test_every_structured_record_carries_the_context_fields(flow: Flow) -> None:
    files = sorted((flow.home / "logs").glob("*.log"))
    assert {"control.log", "tunnels.log"} <= {f.name for f in files}
    for path in files:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            assert {"sweep", "job", "attempt", "instance"} <= set(entry), (path, line)


def test_report_and_webhook(flow: Flow) -> None:
    report = flow.home / "artifacts" / flow.sweep_id / "report" / "report.md"
    assert "1 SUCCEEDED" in report.read_text()
    texts = [body["text"] for body in flow.webhook]
    assert any(t.startswith(f"saefleet: sweep finished (sweep={flow.sweep_id})") for t in texts)


# ---- secrets ------------------------------------------------------------------------------------


def leaks(text: str) -> list[str]:
    return [name for name, secret in FAKE_SECRETS.items() if secret in text]


def test_the_secrets_were_in_the_run(flow: Flow) -> None:
    """The scans below mean something: the run did hold these secrets, where they belong."""
    homes = sorted((flow.home / "local-instances").glob("local-*/home"))
    assert len(homes) == 2  # attempt 1, paused by the drain, and attempt 2
    for instance_home in homes:
        assert FAKE_SECRETS["HF_TOKEN"] in (instance_home / "secrets.env").read_text()
        assert TEST_PASSWORD in (instance_home / "worker.url").read_text()
        assert (instance_home / "worker.url").stat().st_mode & 0o777 == 0o600
    assert flow.webhook  # delivered to the secret URL


def test_no_secret_in_redis_or_task_messages(flow: Flow) -> None:
    assert len(flow.redis_seen) > 100  # the sampler saw the run
    # Task messages were read: supervise_training's next poll waited in Redis through the drain.
    assert any(SUPERVISE in v for v in flow.redis_seen)
    found = {value[:120]: leaks(value) for value in flow.redis_seen if leaks(value)}
    assert found == {}


def test_no_secret_in_log_files(flow: Flow) -> None:
    paths = [p for p in (flow.home).rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    assert any(p.name == "worker.log" for p in paths) or any("worker-a1" in p.name for p in paths)
    found = {str(p): leaks(p.read_text(errors="replace")) for p in paths}
    assert {p: names for p, names in found.items() if names} == {}


def test_no_secret_in_command_output_reports_or_webhook(flow: Flow) -> None:
    report_dir = flow.home / "artifacts" / flow.sweep_id / "report"
    texts = {**flow.outputs, "report.md": (report_dir / "report.md").read_text()}
    texts["webhook"] = json.dumps(flow.webhook)
    assert {name: leaks(text) for name, text in texts.items() if leaks(text)} == {}
