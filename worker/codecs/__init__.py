"""Avro between Kafka bytes and Python records: ``(value, ctx)`` decoders and encoders
(``avro``), the writer and the reader compiled per schema (``writer``, ``reader``), schema loading and introspection
(``schemas``), schema evolution (``evolution``), the Schema Registry port and its in-memory twin
(``registry``) with the client over confluent-kafka's (``registry_client``),
and plain-language explanations of why a record does not fit a schema (``explain``).
"""
