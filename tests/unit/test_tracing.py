"""Which ``OTEL_*`` variables turn traces on and pick the exporters; and that without them
nothing of OpenTelemetry is imported (``loops_webhooks/tracing.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from loops_webhooks.settings import ConfigurationError
from loops_webhooks.tracing import exporter_names, start_tracing, tracing_requested


@pytest.mark.parametrize(
    ("environ", "requested"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "shop-webhooks"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_traces_are_on_only_when_an_exporter_or_an_otlp_endpoint_is_named(
    environ: dict[str, str], requested: bool
) -> None:
    assert tracing_requested(environ) is requested


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["otlp_proto_grpc"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp_proto_http"]),
    ],
)
def test_otlp_is_http_protobuf_unless_the_protocol_variables_say_grpc(
    environ: dict[str, str], names: list[str]
) -> None:
    assert exporter_names(environ) == names


def test_a_protocol_the_python_exporters_lack_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="'http/json' is not supported"):
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_an_exporter_nobody_installed_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json")

    with pytest.raises(ConfigurationError, match="no exporter named 'zipkin_json'"):
        start_tracing("loops-webhooks-receiver")


def run_python(script: str, **environ: str) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_variables_the_receiver_and_worker_import_nothing_of_opentelemetry() -> None:
    script = """
        import sys
        from loops_webhooks.cli import start_tracing
        from loops_webhooks.handlers.examples import router
        from loops_webhooks.ingest.app import create_app
        from loops_webhooks.settings import Settings
        from loops_webhooks.workers.runner import build_worker

        settings = Settings(webhook_secret="whsec_x")
        create_app(settings, "redis://127.0.0.1:1", start_tracing("receiver"))
        build_worker(settings, "redis://127.0.0.1:1", router, start_tracing("worker"))
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
    """

    ran = run_python(script)

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_traces_asked_for_without_the_extra_stop_serve_with_how_to_install_it() -> None:
    script = """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from loops_webhooks.cli import main
        sys.exit(main(["serve"]))
    """

    ran = run_python(
        script,
        OTEL_TRACES_EXPORTER="console",
        LOOPS_WEBHOOK_SECRET="whsec_x",
        REDIS_URL="redis://127.0.0.1:1",
    )

    assert ran.returncode == 2
    assert "pip install 'loops-webhooks[otel]'" in ran.stderr


SERVICE_NAME_SCRIPT = """
    from loops_webhooks.tracing import start_tracing
    print(start_tracing("loops-webhooks-worker").resource.attributes["service.name"])
"""


def test_otel_service_name_names_the_service_else_the_command_does() -> None:
    named = run_python(
        SERVICE_NAME_SCRIPT, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="shop-webhooks"
    )
    unnamed = run_python(SERVICE_NAME_SCRIPT, OTEL_TRACES_EXPORTER="console")

    assert named.returncode == 0 and unnamed.returncode == 0, named.stderr + unnamed.stderr
    # the last line: structlog, not configured here, prints its "traces on" line first
    assert named.stdout.splitlines()[-1] == "shop-webhooks"
    assert unnamed.stdout.splitlines()[-1] == "loops-webhooks-worker"
