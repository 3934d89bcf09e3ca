"""Streaming real-time inference worker: Kafka → Avro → Redis features → ONNX → predictions."""

__version__ = "0.1.0"
