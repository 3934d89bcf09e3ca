"""The OTLP alternatives to the traces topic: batch spans reach a collector over HTTP and gRPC
(real loopback servers speaking the OTLP protocol)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.telemetry import SpanRecord, decode_request
from worker.records import BatchResult, Delivery, InputMessage, StageTiming
from worker.telemetry.tracing import BatchSampler, BatchTracer, QueueSpanProcessor, otlp_exporter, tracer_provider

grpc = pytest.importorskip("grpc")
trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_service_pb2_grpc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")


class Received:
    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def add(self, body: bytes, path: str = "") -> None:
        with self.lock:
            self.requests.append(body)
            self.paths.append(path)

    def spans(self) -> list[SpanRecord]:
        with self.lock:
            return [span for body in self.requests for span in decode_request(body)]


@pytest.fixture
def http_collector() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.add(self.rfile.read(int(self.headers["Content-Length"])), self.path)
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc,name-defined]
        def Export(self, request: Any, context: Any) -> Any:
            received.add(request.SerializeToString())
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received
    server.stop(0)


def trace_one_batch(kind: str, endpoint: str) -> None:
    processor = QueueSpanProcessor(otlp_exporter(kind, endpoint), interval_s=60)
    provider = tracer_provider(processor, "otlp-test", "1")
    tracer = BatchTracer(provider.get_tracer("t"), BatchSampler(1.0), "g", "out")
    batch = [InputMessage(b"v", None, "in", 0, i) for i in range(3)]
    received = time.perf_counter_ns()
    tracer.batch_started(batch, received)
    result = BatchResult(model_name="m", model_version="1",
                         timings=[StageTiming("inference", received + 10, received + 20)])
    delivery = Delivery(3, consumed_ns=received, published_ns=received + 30, acked_ns=received + 30)
    tracer.batch_done(batch, result, delivery)
    tracer.checkpoint_done(StageTiming("commit", received + 40, received + 50), True)
    provider.shutdown()


@pytest.mark.parametrize("kind, collector", [("otlp_http", "http_collector"), ("otlp_grpc", "grpc_collector")])
def test_batch_spans_reach_an_otlp_collector(kind: str, collector: str, request: pytest.FixtureRequest) -> None:
    endpoint, received = request.getfixturevalue(collector)
    trace_one_batch(kind, endpoint)
    spans = {s.name: s for s in received.spans()}
    assert set(spans) == {"process in", "inference", "deliver", "commit"}
    root = spans["process in"]
    assert root.resource["service.name"] == "otlp-test"
    assert all(s.parent_span_id == root.span_id for name, s in spans.items() if name != "process in")
    if kind == "otlp_http":
        assert set(received.paths) == {"/v1/traces"}
