"""Observability: trace context through Kafka, batch spans and their export (to a Kafka topic or
an OTLP collector), Prometheus metrics, health probes and log context.

Everything here listens through the runner's ``Observer`` hooks; nothing is called from the
pipeline. Submodules are imported on demand so that the CLI does not pay for OpenTelemetry or
prometheus_client when telemetry is off.
"""
