"""``worker demo``: an example end to end, with one command (the fraud example by default).

Uses the Kafka and Redis of the config when they answer (or those given with
--bootstrap-servers / --redis-url or the environment), and otherwise starts a local broker
(tansu) and a redis-server on free ports. Then it creates the topics, loads the example's
features, starts a worker (`worker run`, as a process of its own), produces example
events (a few of them deliberately broken), shows the predictions and dead letters
as they arrive, prints a summary and stops everything it started, also on Ctrl-C.

The example data come from the generators named in the config's `demo` section (or given
with --events-generator and --features-generator). Before writing feature hashes into a
Redis it did not start, the demo asks if that database holds keys of anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from worker.app.components import redis_where
from worker.app.tools import create_topics, entity_matcher, make_sender, redis_client, topic_decoder, topic_reader
from worker.cli.options import config_options, settings_from
from worker.config.compile import compile_settings
from worker.config.settings import ENV_PREFIX, WorkerSettings
from worker.devtools.console import ProgressLine, count
from worker.devtools.loader import EntityMatcher, load_hashes
from worker.devtools.local import LocalBroker, LocalProcess, LocalRedis, kafka_address, port_open
from worker.devtools.scoreboard import Roles, Scoreboard, percentiles
from worker.devtools.sender import EventSender, Tally, send_all
from worker.devtools.sources import generated
from worker.errors import StartupError, ToolError
from worker.features.redis_store import RedisAddress
from worker.kafka.reader import TopicReader
from worker.records import UNIT_SECONDS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "fraud-example.yaml"
FRAUD_ROW = "{event_id:<15} {card_id:<9} {merchant_id:<8} {channel:<11} {amount:>9.2f} {currency:<3} {score:>6.3f}"
FRAUD_HEADER = f"{'event':<15} {'card':<9} {'merchant':<8} {'channel':<11} {'amount':>13} {'score':>6}  {'':7} latency"
STEPS = 6
IDLE_LIMIT_S = 30.0
_PASSED_ON = {"input_topic": "--input-topic", "output_topic": "--output-topic", "dlq_topic": "--dlq-topic",
              "group_id": "--group-id", "guarantee": "--guarantee", "bootstrap_servers": "--bootstrap-servers",
              "redis_url": "--redis-url"}


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run an example end to end (starts what it needs)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser, _shown(EXAMPLE_CONFIG))
    parser.add_argument("--events", type=int, default=2000, help="events to produce (default 2000)")
    parser.add_argument("--rate", type=float, default=500, help="events per second (default 500; 0: at once)")
    parser.add_argument("--poison", type=float, default=0.002, metavar="SHARE",
                        help="share of events sent as broken Avro, to show dead letters (default 0.002)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the example's event stream")
    parser.add_argument("--show", choices=["some", "all", "none"], default="some",
                        help="predictions to print: the first ten, then flagged ones up to fifty (default), all, "
                             "none")
    parser.add_argument("--local", action="store_true", help="start a local broker and Redis even if some answer")
    parser.add_argument("--yes", action="store_true", help="write the example's features into a Redis database "
                        "that holds other keys without asking")
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="logs go here (default .demo)")
    parser.add_argument("--events-generator", metavar="FILE.py:FN",
                        help="a function yielding the example's events (default: the config's demo.events)")
    parser.add_argument("--features-generator", metavar="FILE.py:FN",
                        help="a function yielding its feature hashes (default: the config's demo.features)")
    parser.add_argument("--key", help="event field used as the message key (default: the config's demo.key)")
    parser.set_defaults(fn=cmd_demo)


def _shown(path: Path) -> Path:
    with contextlib.suppress(ValueError):
        return path.relative_to(Path.cwd())
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    name = compile_settings(settings).model.name  # every config problem, before anything starts
    _example_data(args, settings)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            return Demo(args, settings, stack, name).run()
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started is stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _example_data(args: argparse.Namespace, settings: WorkerSettings) -> None:
    """The generators and key: given on the command line, else from the config's ``demo`` section."""
    d = settings.demo
    args.events_generator = args.events_generator or d.events
    args.features_generator = args.features_generator or d.features
    args.key = args.key or d.key
    if not (args.events_generator and args.features_generator):
        raise ToolError("the demo needs example data: name its generators in the config's demo section "
                        "(demo.events, demo.features: path/to/file.py:function) or with --events-generator and "
                        "--features-generator")
    for spec in (args.events_generator, args.features_generator):
        if not Path(spec.rpartition(":")[0]).is_file():
            raise ToolError(f"{spec.rpartition(':')[0]} not found (the examples' generators are in a clone of the "
                            "repository: make demo)")


def roles(settings: WorkerSettings) -> Roles:
    """Which output fields the demo reads the label, the scoring time and the event time from."""
    fields = settings.output.fields
    by_special = {f.special: name for name, f in fields.items() if f.special}
    time_path = settings.telemetry.event_time_field
    event_time = next((name for name, f in fields.items() if time_path and f.event == time_path), None)
    fraud_table = set(re.findall(r"\{(\w+)", FRAUD_ROW)) <= set(fields)
    return Roles(by_special.get("label"), by_special.get("scored_at"), event_time,
                 UNIT_SECONDS[settings.telemetry.event_time_unit] * 1000, FRAUD_ROW if fraud_table else None,
                 FRAUD_HEADER)


class Demo:
    def __init__(self, args: argparse.Namespace, settings: WorkerSettings, stack: ExitStack, model: str) -> None:
        self.args = args
        self.settings = settings
        self.stack = stack
        self.model = model
        self.workdir: Path = args.workdir
        self.step_no = 0
        self.worker_args = _passed_on(args)

    def run(self) -> int:
        print(f"worker demo: the {self.model} example end to end (config {self.args.config})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kafka()
        self.redis()
        self.topics()
        self.features()
        worker = self.worker()
        return self.events(worker)

    def step(self, name: str, text: str) -> None:
        self.step_no += 1
        print(f"[{self.step_no}/{STEPS}] {name:<9}{text}", flush=True)

    def start(self, process: LocalProcess) -> LocalProcess:
        """Start a process that is stopped (SIGTERM, then SIGKILL) when the demo ends, however it ends."""
        self.stack.callback(_stop, process)
        return process.start()

    def use(self, section: str, **values: Any) -> None:
        update = {section: getattr(self.settings, section).model_copy(update=values)}
        self.settings = self.settings.model_copy(update=update)

    def kafka(self) -> None:
        servers = self.settings.kafka.bootstrap_servers
        explicit = self.args.bootstrap_servers is not None or f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS" in os.environ
        if not self.args.local and (explicit or port_open(*kafka_address(servers))):
            self.step("Kafka", f"using {servers} ({'given' if explicit else 'configured, and it answers'})")
            return
        broker = self.start(LocalBroker(log_path=self.workdir / "broker.log"))
        assert isinstance(broker, LocalBroker)
        self.use("kafka", bootstrap_servers=broker.bootstrap_servers)
        self.worker_args["--bootstrap-servers"] = [broker.bootstrap_servers]
        self.step("Kafka", f"started a local broker (tansu, in memory) on {broker.bootstrap_servers}")

    def redis(self) -> None:
        url = self.settings.redis.url
        if self.settings.redis.cluster:  # the demo starts single servers only: a cluster is always the user's
            if self.args.local:
                raise ToolError("--local starts a single redis-server, and redis.cluster is set: leave out --local "
                                "to use the cluster of redis.url, or unset redis.cluster (WORKER_REDIS__CLUSTER)")
            shown = redis_where(self.settings)
            self._may_write(shown)
            self.step("Redis", f"using the Redis Cluster {shown} (redis.cluster)")
            return
        address = RedisAddress.from_url(url)
        shown = address.redacted()
        explicit = self.args.redis_url is not None or f"{ENV_PREFIX}REDIS__URL" in os.environ
        if not self.args.local and (explicit or address.unix_path or port_open(address.host, address.port)):
            self._may_write(shown)
            self.step("Redis", f"using {shown} ({'given' if explicit else 'configured, and it answers'})")
            return
        redis = self.start(LocalRedis(log_path=self.workdir / "redis.log", workdir=self.workdir))
        assert isinstance(redis, LocalRedis)
        self.use("redis", url=redis.url)
        self.worker_args["--redis-url"] = [redis.url]
        self.step("Redis", f"started a local redis-server on {redis.url}")

    def _may_write(self, shown: str) -> None:
        """Ask before adding the example's hashes to a database that holds keys of something else."""
        if self.args.yes:
            return
        others = foreign_keys(redis_client(self.settings), entity_matcher(self.settings))
        if not others:
            return
        what = f"{shown} already holds keys that are not this example's ({', '.join(others)}, ...)"
        if not sys.stdin.isatty():
            raise ToolError(f"{what}; the demo would add its feature hashes there. Use --local for a Redis of its "
                            "own, --redis-url for another database, or --yes to write anyway")
        if input(f"{what}. Add the example's feature hashes to it? [y/N] ").strip().lower() not in ("y", "yes"):
            raise ToolError("stopped: nothing was written (--local starts a Redis of the demo's own)")

    def topics(self) -> None:
        lines = create_topics(self.settings, partitions=3)
        self.step("topics", ("\n" + " " * 15).join(lines))

    def features(self) -> None:
        progress = ProgressLine()
        tally = load_hashes(redis_client(self.settings), generated(self.args.features_generator),
                            entity_matcher(self.settings), 2000, on_progress=lambda t: progress.update(t.line()))
        progress.done()
        if tally.rejected or tally.failed:
            raise ToolError("loading the example features failed: " + "; ".join(tally.problems[:3]))
        per = ", ".join(f"{name} {count(n)}" for name, n in sorted(tally.per_entity.items()))
        seconds = time.monotonic() - tally.started
        self.step("features", f"loaded {count(tally.written)} hashes ({per}) in {seconds:.1f}s")

    def worker(self) -> LocalProcess:
        argv = [sys.executable, "-m", "worker", "run", "--config", str(self.args.config)]
        argv += [part for option, values in self.worker_args.items() for v in values for part in (option, v)]
        log = self.workdir / "worker.log"
        started = time.monotonic()
        worker = self.start(LocalProcess("worker", argv, log))
        worker.wait_for_log(r"runner\.loop: assigned \S+\[", timeout_s=120)
        self.step("worker", f"running (pid {worker.pid}, log {log}); it joined its group and took its partitions "
                            f"in {time.monotonic() - started:.1f}s")
        return worker

    def events(self, worker: LocalProcess) -> int:
        a, k = self.args, self.settings.kafka
        reader = topic_reader(self.settings, [k.output_topic, k.dlq_topic], from_beginning=False)
        self.stack.callback(reader.close)
        sender = make_sender(self.settings, a.key, a.poison, a.seed)
        pace = f"{a.rate:,.0f}/s" if a.rate else "full speed"
        self.step("events", f"producing {count(a.events)} example events to {sender.topic} "
                            f"at {pace}" + (f", {a.poison:.1%} of them broken" if a.poison else ""))
        board = Scoreboard(topic_decoder(self.settings, k.output_topic), k.output_topic, a.show, roles(self.settings))
        producing = Producing(sender, generated(a.events_generator, n=a.events, seed=a.seed), a.rate)
        self.stack.callback(producing.stop)
        watch(reader, board, producing, worker)
        return summary(board, producing.sender.tally, worker)


def _passed_on(args: argparse.Namespace) -> dict[str, list[str]]:
    """The overrides given to the demo, to give the worker as well."""
    out: dict[str, list[str]] = {}
    for name, option in _PASSED_ON.items():
        value = getattr(args, name, None)
        if value is not None:
            out[option] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


def _stop(process: LocalProcess) -> None:
    if process.running():
        code = process.stop()
        print(f"stopped {process.name} (pid {process.pid}, exit code {code})", flush=True)


class Producing:
    """Sends the events from a thread, so the predictions can be shown while they are produced."""

    def __init__(self, sender: EventSender, items: Iterator[tuple[str, Any]], events_per_s: float) -> None:
        self.sender = sender
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items, events_per_s), name="demo-producer",
                                        daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[tuple[str, Any]], events_per_s: float) -> None:
        try:
            send_all(self.sender, items, events_per_s, stop=self._stop)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc

    def done(self) -> bool:
        if self._thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def watch(reader: TopicReader, board: Scoreboard, producing: Producing, worker: LocalProcess) -> None:
    """Show what arrives until every produced event is accounted for (or nothing comes for a while)."""
    progress = ProgressLine()
    wanted = producing.sender.tally
    last = time.monotonic()
    while True:
        for message in reader.read():
            last = time.monotonic()
            for line in board.add(message):
                progress.above(line, sys.stdout)
        done = producing.done()
        flagged = f" · flagged {count(board.flagged)}" if board.roles.label else ""
        progress.update(f"produced {count(wanted.sent)} · scored {count(board.scored)}{flagged} · dead letters "
                        f"{count(board.dead_letters)}")
        if not worker.running():
            raise StartupError(f"the worker stopped (exit code {worker.stop()}); see {worker.log_path}")
        if done and (board.scored + board.dead_letters >= wanted.sent or time.monotonic() - last > IDLE_LIMIT_S):
            break
    progress.done()


def summary(board: Scoreboard, tally: Tally, worker: LocalProcess) -> int:
    dead = board.dead_letters
    missing = tally.sent - board.scored - dead
    label = board.roles.label
    flagged = f", {count(board.flagged)} with {label} true ({board.flagged / board.scored:.2%})" \
        if label and board.scored else ""
    lines = [
        "summary",
        f"  events       {count(tally.sent)} produced ({count(tally.poisoned)} of them broken on purpose)",
        f"  predictions  {count(board.scored)}{flagged}",
        f"  dead letters {count(dead)}" + (f" ({_by_stage(board.dead)})" if dead else ""),
        f"  latency      {_latency(board)}",
        f"  logs         {worker.log_path} (and the broker's and Redis' beside it when started here)",
    ]
    if missing > 0:
        lines.append(f"  MISSING      {count(missing)} events have neither a prediction nor a dead letter after "
                     f"{IDLE_LIMIT_S:.0f}s of silence")
    print("\n".join(lines), flush=True)
    return 0 if missing <= 0 and not tally.rejected and not tally.failed else 1


def _by_stage(dead: Counter[str]) -> str:
    return ", ".join(f"{stage}: {n}" for stage, n in dead.items())


def _latency(board: Scoreboard) -> str:
    if not board.read_ms:
        return ("- (to see it, set telemetry.event_time_field and copy that field, and $scored_at, into the "
                "output)")
    return f"event → scored {percentiles(board.scored_ms)}; event → prediction read {percentiles(board.read_ms)}"


def foreign_keys(client: Any, matcher: EntityMatcher, sample: int = 1000, shown: int = 3) -> list[str]:
    """Up to ``shown`` keys among the first ``sample`` of the database that no configured entity owns."""
    others = []
    for n, key in enumerate(client.scan_iter(count=sample)):
        text = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if matcher.match(text) is None:
            others.append(text)
        if len(others) >= shown or n >= sample:
            break
    return others
