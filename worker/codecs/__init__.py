"""Avro between Kafka bytes and Python records: ``(value, ctx)`` decoders and encoders
(``avro``), the writer compiled per schema (``writer``), schema loading and introspection
(``schemas``), the Schema Registry port with its HTTP client and in-memory twin (``registry``),
and plain-language explanations of why a record does not fit a schema (``explain``).
"""
