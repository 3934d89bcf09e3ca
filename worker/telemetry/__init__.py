"""Observability: trace context through Kafka, batch spans and their export (to a Kafka topic or
an OTLP collector), Prometheus metrics, health probes, log context, the progress log and the
run statistics of ``worker run --stats-file``.

Everything here listens through the runner's ``Observer`` hooks; nothing is called from the
pipeline.
"""
