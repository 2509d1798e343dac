"""compose.yaml's structure (Docker is not needed): the services and the profile, one image from
ops/Dockerfile, commands and healthchecks that our CLI accepts, Redis durable and password
protected, no secret written inline, ports on loopback, every variable documented."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ops.cli import app
from tests.support import REPO

COMPOSE = REPO / "compose.yaml"
SAEFLEET_SERVICES = {"control", "beat", "tunnels", "flower", "gpu-worker"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK", re.I)
REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}$")
URL_CREDENTIALS = re.compile(r"://[^/@\s]*:(?P<password>[^@\s]+)@")
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def cli_accepts(argv: list[str]) -> None:
    """`argv` (starting with `saefleet`) parses: its command and options exist."""
    assert argv[0] == "saefleet", argv
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{argv}: {result.output}"


def test_services_and_the_gpu_profile(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"redis", *SAEFLEET_SERVICES}
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert all("profiles" not in s for name, s in services.items() if name != "gpu-worker")
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_one_image_built_from_ops_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in SAEFLEET_SERVICES:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "ops/Dockerfile"}, name
        assert service["image"] == "saefleet:latest"
        assert service["env_file"] == ".env"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "saefleet-home:/data" in service["volumes"]
    dockerfile = (REPO / "ops" / "Dockerfile").read_text()
    assert "pip install ." in dockerfile and "USER saefleet" in dockerfile
    assert ".env" in (REPO / "ops" / "Dockerfile.dockerignore").read_text().split()


def test_commands_and_healthchecks_match_our_cli(services: dict[str, dict[str, Any]]) -> None:
    for name in SAEFLEET_SERVICES:
        service = services[name]
        cli_accepts(service["command"])
        test = service["healthcheck"]["test"]
        if test[1] == "saefleet":
            cli_accepts(test[1:])
    for name in ("control", "beat", "tunnels", "gpu-worker"):
        assert services[name]["command"] == ["saefleet", "service", name]
        assert services[name]["healthcheck"]["test"][1:] == ["saefleet", "service", name, "--check"]
    flower = services["flower"]
    assert flower["command"][:2] == ["saefleet", "flower"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_service_names_are_those_the_control_plane_runs() -> None:
    from ops.controlplane import celery_services
    from ops.services import service_argv
    from queue_app.settings import Settings

    settings = Settings()
    for service in celery_services(settings):
        assert service_argv(settings, service.name, None) == (service.argv, service.marker)


def test_redis_is_durable_password_protected_and_checked(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert '--requirepass "$$SAEFLEET_REDIS_PASSWORD"' in command
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis  # instances reach it through the tunnels service
    assert services["control"]["environment"]["SAEFLEET_REDIS_URL"].startswith(
        "redis://:${SAEFLEET_REDIS_PASSWORD:?"
    )


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert REFERENCE.match(str(value)), f"{name} must come from .env"
    for text in strings(compose):
        for match in URL_CREDENTIALS.finditer(text):
            assert REFERENCE.match(match["password"]), f"inline credentials in {text!r}"


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert published == [("flower", "127.0.0.1:5555:5555")]


def test_every_variable_is_documented_in_the_env_example() -> None:
    example = (REPO / "ops" / "env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.M))
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    used |= set(re.findall(r"\$\$([A-Z0-9_]+)", COMPOSE.read_text()))
    assert used <= documented, used - documented
    assert "/.env" in (REPO / ".gitignore").read_text().split()


def test_operations_doc_names_every_service(services: dict[str, dict[str, Any]]) -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    for name in services:
        assert f"`{name}`" in doc, name


def test_ops_scripts_are_executable() -> None:
    for script in ("drain", "teardown"):
        path = Path(REPO / "ops" / script)
        assert path.stat().st_mode & 0o111, script
