"""Helpers shared by the test suite: real brokers and Redis servers, Kafka I/O, worker processes,
small ONNX models and config files."""
