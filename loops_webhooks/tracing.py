"""Traces (the ``otel`` extra): whether the standard ``OTEL_*`` variables ask for them, and the
tracer that the receiver and the worker are given when they do.

The SDK's own environment reading (``opentelemetry.sdk._configuration``, run by the distro's
``opentelemetry-instrument``) is private API, and it also starts metrics and log exporters;
so the command line builds the tracer provider here from the SDK's public parts, which read
the rest of the variables themselves: ``Resource.create`` (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), ``TracerProvider`` (``OTEL_TRACES_SAMPLER``),
``BatchSpanProcessor`` (``OTEL_BSP_*``) and the OTLP exporters (``OTEL_EXPORTER_OTLP_*``).
Exporters are found by name as the SDK finds them, in the ``opentelemetry_traces_exporter``
entry points (``console``, ``otlp_proto_http``, ``otlp_proto_grpc``, any installed one).

Without those variables nothing of OpenTelemetry is imported: ``tracing_requested`` reads
the environment only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points, version
from typing import TYPE_CHECKING

import structlog

from loops_webhooks.settings import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["exporter_names", "start_tracing", "tracing_requested"]

OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
DEFAULT_OTLP_PROTOCOL = "http/protobuf"
"""The specification's default; the SDK's own auto-configuration still picks gRPC."""

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
INSTALL_HINT = "install the extra: pip install 'loops-webhooks[otel]'"


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Traces are on when ``OTEL_TRACES_EXPORTER`` names an exporter (not ``none``), or, with
    it unset, an OTLP endpoint is given; ``OTEL_SDK_DISABLED=true`` turns them off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if names:
        return names != "none"
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The entry point names of the exporters asked for: ``otlp`` (the default when only an
    endpoint is set) by ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``.
    Raises ConfigurationError for a protocol the Python exporters do not implement."""
    listed = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    names = []
    for name in (part.strip() for part in listed.split(",")):
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or DEFAULT_OTLP_PROTOCOL
            ).strip()
            if protocol not in OTLP_BY_PROTOCOL:
                raise ConfigurationError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; "
                    f"use one of {', '.join(OTLP_BY_PROTOCOL)}"
                )
            name = OTLP_BY_PROTOCOL[protocol]
        if name and name not in names:
            names.append(name)
    return names


def start_tracing(default_service_name: str) -> Tracer | None:
    """The tracer of this process, exporting as the ``OTEL_*`` variables say, or None when
    they ask for no traces. The provider is also made the global one, so a shop's own
    instrumented libraries (HTTP clients, SQLAlchemy) report to the same place; it flushes
    its spans when the process exits.

    Raises ConfigurationError when traces are asked for but the extra is not installed, or
    an exporter is not known.
    """
    if not tracing_requested(os.environ):
        return None
    names = exporter_names(os.environ)
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER asks for traces: {INSTALL_HINT}") from None

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    for name in names:
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER: no exporter named {name!r} is installed ({INSTALL_HINT})"
            )
        provider.add_span_processor(BatchSpanProcessor(found[0].load()()))
    trace.set_tracer_provider(provider)
    structlog.get_logger(logger_name="loops_webhooks.tracing").info(
        "traces on", exporters=names, service_name=resource.attributes[SERVICE_NAME]
    )
    return provider.get_tracer("loops_webhooks", version("loops-webhooks"))
