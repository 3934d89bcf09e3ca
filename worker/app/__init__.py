"""Wiring: settings → components → a running worker. With the CLI, the only package that reads
settings: Kafka clients (``kafka``), the pipeline's parts (``components``), telemetry
(``telemetry``), the model lifecycle (``lifecycle``), the hands-on tools (``tools``) and the
worker itself (``worker``).
"""
