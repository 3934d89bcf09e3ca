"""Capacity model: measured per-unit figures → partitions, replicas, cores and Redis shards for a rate.

    python -m bench.capacity measure                  # figures on this machine → bench/results/capacity/
    python -m bench.capacity plan --target 1000000    # the plan for 1M events/s from those figures
    python -m bench.capacity plan --target 250000 --headroom 0.4 --cores-per-replica 2 --json
    python -m bench.capacity plot                     # replicas and shards against the target rate (PNG)

``measure`` (bench/capacity_measure.py) runs the shared contract check a few times with a Redis of
its own, reads the worker's own statistics and Redis' counters, drives one redis-server with
``redis-benchmark`` in the worker's pipelined HMGET shape, and sizes the workload's Avro records.
``plan`` is arithmetic on those figures; every number it prints comes with the assumption behind it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "bench" / "results" / "capacity" / "figures.json"
KAFKA_BATCH_HEADER_BYTES = 61  # RecordBatch v2 header, once per partition per produce batch
MB = 1e6


class CapacityError(ValueError):
    """A figure or an option the model cannot plan with."""


@dataclass(frozen=True)
class Figures:
    """The per-unit figures a plan is built from (``measure`` writes them; tests give their own)."""

    worker_eps_per_process: float  # events/s of one worker process, median of the contract runs
    worker_cpu_us_per_event: float  # process CPU (every thread) per event while busy
    redis_commands_per_event: float  # HMGETs per event when no key repeats within a batch
    redis_request_bytes_per_command: float
    redis_reply_bytes_per_command: float
    redis_max_commands_by_depth: dict[int, float]  # one redis-server: HMGET/s at each pipeline depth
    input_record_bytes: float  # Avro value + key + Kafka per-record framing, without the batch header
    output_record_bytes: float

    def check(self) -> None:
        numbers = {k: v for k, v in asdict(self).items() if not isinstance(v, dict)}
        for name, value in numbers.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise CapacityError(f"figure {name} must be a positive number, not {value!r}")
        if not self.redis_max_commands_by_depth:
            raise CapacityError("figure redis_max_commands_by_depth is empty: run `measure` first")
        for depth, rate in self.redis_max_commands_by_depth.items():
            if depth < 1 or not rate > 0:
                raise CapacityError(f"redis_max_commands_by_depth: depth {depth} must be ≥ 1 and rate > 0")


@dataclass(frozen=True)
class Options:
    """What the plan is for, and the assumptions a person may change (defaults in ``plan --help``)."""

    target_eps: float
    headroom: float = 0.3  # share of each worker process kept free (spikes, rebalances, catch-up)
    cores_per_replica: int = 1  # one worker process per core: Python's hot path holds the GIL
    # A process's events/s: 1 / its CPU per event ("cpu": events per core-second, what a process on a core
    # of its own reaches, since the worker is CPU-bound), or the throughput measured here ("throughput":
    # lower when the broker and Redis take part of the process's core, as on a 2-core machine)
    basis: str = "cpu"
    partition_factor: float = 2.0  # partitions per consumer, so the group can grow without repartitioning
    max_partition_mb_s: float = 10.0  # write rate one partition is planned for
    batch_events: int | None = None  # events per worker batch; None: rate × latency budget, capped
    latency_budget_ms: float = 3.0  # batch.latency_budget_ms
    max_batch_events: int = 2000  # batch.max_events
    redis_utilisation: float = 0.7  # share of a shard's measured maximum that is planned for
    redis_read_replicas: int = 0  # replicas per shard serving reads (redis.read_from_replicas)
    redis_max_per_shard: float | None = None  # HMGET/s per shard at any depth, instead of the measured curve
    replication_factor: int = 3  # Kafka topic replication factor
    broker_mb_s: float = 200.0  # network budget per broker, each way
    downstream_consumers: int = 1  # consumer groups reading the predictions
    input_batch_records: int = 100  # records per RecordBatch in the upstream producers' requests

    def check(self) -> None:
        if not (math.isfinite(self.target_eps) and self.target_eps > 0):
            raise CapacityError(f"--target must be a positive rate in events/s, not {self.target_eps!r}")
        if not 0 <= self.headroom < 1:
            raise CapacityError(f"--headroom must be in [0, 1), not {self.headroom!r}")
        if not 0 < self.redis_utilisation <= 1:
            raise CapacityError(f"--redis-utilisation must be in (0, 1], not {self.redis_utilisation!r}")
        if self.cores_per_replica < 1 or self.partition_factor < 1 or self.replication_factor < 1:
            raise CapacityError("--cores-per-replica, --partition-factor and --replication-factor must be ≥ 1")
        if self.redis_read_replicas < 0 or self.downstream_consumers < 0:
            raise CapacityError("--redis-read-replicas and --downstream-consumers must be ≥ 0")
        if min(self.max_partition_mb_s, self.broker_mb_s, self.max_batch_events, self.input_batch_records) <= 0:
            raise CapacityError("--max-partition-mb-s, --broker-mb-s, --max-batch-events and --input-batch-records "
                                "must be positive")
        if self.basis not in ("throughput", "cpu"):
            raise CapacityError(f"--basis must be throughput or cpu, not {self.basis!r}")
        if self.redis_max_per_shard is not None and not self.redis_max_per_shard > 0:
            raise CapacityError(f"--redis-max-per-shard must be positive, not {self.redis_max_per_shard!r}")
        if self.batch_events is not None and self.batch_events < 1:
            raise CapacityError(f"--batch-events must be ≥ 1, not {self.batch_events!r}")


@dataclass
class Plan:
    target_eps: float
    worker_processes: int
    replicas: int
    cores: int
    partitions: int
    batch_events: int
    redis_shards: int
    redis_commands_per_s: int
    broker_in_mb_s: float
    broker_out_mb_s: float
    brokers_for_network: int
    assumptions: dict[str, str] = field(default_factory=dict)


def ceil_div(amount: float, per_unit: float) -> int:
    """Units of ``per_unit`` needed to carry ``amount`` (at least one); a hair of float error is
    forgiven so that 1,000,000 / 50,000 is 20, not 21."""
    return max(1, math.ceil(amount / per_unit - 1e-9))


def redis_max_at_depth(by_depth: dict[int, float], depth: float) -> float:
    """A shard's HMGET/s at a pipeline depth, interpolated on log(depth) between measured depths;
    outside them the nearest measured figure (never extrapolated upward)."""
    depths = sorted(by_depth)
    if depth <= depths[0]:
        return by_depth[depths[0]]
    if depth >= depths[-1]:
        return by_depth[depths[-1]]
    hi = bisect.bisect_left(depths, depth)
    lo_d, hi_d = depths[hi - 1], depths[hi]
    share = (math.log(depth) - math.log(lo_d)) / (math.log(hi_d) - math.log(lo_d))
    return by_depth[lo_d] + share * (by_depth[hi_d] - by_depth[lo_d])


def eps_per_process(figures: Figures, options: Options) -> float:
    """A process's events/s: as measured beside the broker and Redis on this machine, or what its CPU
    per event allows on a core of its own."""
    if options.basis == "cpu":
        return 1e6 / figures.worker_cpu_us_per_event
    return figures.worker_eps_per_process


def workers(figures: Figures, options: Options) -> tuple[int, int]:
    """(worker processes, replicas): enough processes at (1 − headroom) of a process's rate, in
    replicas of ``cores_per_replica`` processes each."""
    usable = eps_per_process(figures, options) * (1 - options.headroom)
    replicas = ceil_div(ceil_div(options.target_eps, usable), options.cores_per_replica)
    return replicas * options.cores_per_replica, replicas


def batch_size(options: Options, eps_per_process: float) -> int:
    """Events per worker batch at this load: what arrives within the latency budget, capped."""
    if options.batch_events is not None:
        return options.batch_events
    arriving = eps_per_process * options.latency_budget_ms / 1000
    return max(1, min(options.max_batch_events, math.floor(arriving)))


def partitions(options: Options, processes: int, input_mb_s: float) -> int:
    """Input partitions: ≥ ``partition_factor`` per consumer process (a partition feeds one consumer
    of the group, so fewer partitions than processes leaves processes idle), and enough that none
    is written faster than ``max_partition_mb_s``."""
    by_consumers = math.ceil(processes * options.partition_factor - 1e-9)
    return max(by_consumers, ceil_div(input_mb_s, options.max_partition_mb_s))


def redis_shards(figures: Figures, options: Options, batch: int) -> int:
    """The fewest shards whose planned share of their measured maximum carries every HMGET. A batch's
    pipeline is split over the shards (one per node), so more shards means shallower pipelines
    and fewer commands per second from each shard: the capacity is looked up at that depth."""
    demand = options.target_eps * figures.redis_commands_per_event
    readers = 1 + options.redis_read_replicas
    for shards in range(1, 100_000):
        depth = max(1.0, batch * figures.redis_commands_per_event / shards)
        capacity = options.redis_max_per_shard or redis_max_at_depth(figures.redis_max_commands_by_depth, depth)
        if shards * readers * capacity * options.redis_utilisation >= demand:
            return shards
    raise CapacityError(f"no Redis layout up to 100,000 shards carries {demand:,.0f} HMGET/s")


def record_batch_bytes(record_bytes: float, records_per_batch: float) -> float:
    """Bytes on the wire per record with the RecordBatch header shared by a batch's records."""
    return record_bytes + KAFKA_BATCH_HEADER_BYTES / max(1.0, records_per_batch)


def broker_traffic(figures: Figures, options: Options, parts: int, batch: int) -> tuple[float, float]:
    """Cluster-wide broker network (MB/s in, MB/s out). Inputs arrive in the upstream producers'
    batches of ``input_batch_records``; each worker batch's predictions are spread over every output
    partition (keyed by card), so a RecordBatch holds batch / partitions of them. Replication: each
    follower fetches what its leader received (in at one broker, out at another)."""
    rate = options.target_eps
    produced_in = rate * record_batch_bytes(figures.input_record_bytes, options.input_batch_records) / MB
    produced_out = rate * record_batch_bytes(figures.output_record_bytes, batch / parts) / MB
    replication = (produced_in + produced_out) * (options.replication_factor - 1)
    into = produced_in + produced_out + replication
    out = produced_in + produced_out * options.downstream_consumers + replication
    return into, out


def make_plan(figures: Figures, options: Options) -> Plan:
    figures.check()
    options.check()
    processes, replicas = workers(figures, options)
    batch = batch_size(options, options.target_eps / processes)  # the planned load, not the maximum
    input_mb_s = options.target_eps * figures.input_record_bytes / MB
    parts = partitions(options, processes, input_mb_s)
    into, out = broker_traffic(figures, options, parts, batch)
    shards = redis_shards(figures, options, batch)
    plan = Plan(options.target_eps, processes, replicas, replicas * options.cores_per_replica, parts, batch, shards,
                round(options.target_eps * figures.redis_commands_per_event), round(into, 1), round(out, 1),
                ceil_div(max(into, out), options.broker_mb_s))
    plan.assumptions = assumptions(figures, options, plan)
    return plan


def assumptions(figures: Figures, options: Options, plan: Plan) -> dict[str, str]:
    """One line per planned number: where it comes from."""
    f, o, p = figures, options, plan
    per_process = eps_per_process(f, o)
    usable = per_process * (1 - o.headroom)
    depth = max(1.0, p.batch_events * f.redis_commands_per_event / p.redis_shards)
    shard_max = o.redis_max_per_shard or redis_max_at_depth(f.redis_max_commands_by_depth, depth)
    measured = ("given with --redis-max-per-shard" if o.redis_max_per_shard
                else f"measured at pipeline depth {depth:,.0f}")
    basis = (f"{per_process:,.0f} events/s per process from {f.worker_cpu_us_per_event:.1f} µs CPU per event on a "
             "core of its own" if o.basis == "cpu" else
             f"{per_process:,.0f} events/s measured per process beside the broker and Redis")
    readers = 1 + o.redis_read_replicas
    to_redis = p.redis_commands_per_s * f.redis_request_bytes_per_command / MB
    from_redis = p.redis_commands_per_s * f.redis_reply_bytes_per_command / MB
    return {
        "worker_processes": f"one process per core (the hot path holds the GIL); {basis}, planned at "
                            f"{1 - o.headroom:.0%} = {usable:,.0f}",
        "replicas": f"{o.cores_per_replica} core(s) per replica, each core running one worker process",
        "cores": f"worker cores only; {f.worker_cpu_us_per_event:.1f} µs CPU per event measured (every thread), "
                 f"i.e. {f.worker_cpu_us_per_event * usable / 1e6:.2f} core per process at the planned rate",
        "partitions": f"≥ {o.partition_factor:g} per consumer process (room to add consumers without "
                      f"repartitioning, which would move keys) and ≤ {o.max_partition_mb_s:g} MB/s written each; "
                      "predictions topic the same",
        "batch_events": f"events arriving per process within batch.latency_budget_ms {o.latency_budget_ms:g} ms, "
                        f"capped at batch.max_events {o.max_batch_events}" if o.batch_events is None
                        else "given with --batch-events",
        "redis_shards": f"{f.redis_commands_per_event:g} HMGET per event; a shard planned at "
                        f"{o.redis_utilisation:.0%} of {shard_max:,.0f} HMGET/s {measured} (a batch's pipeline "
                        f"split over the shards); reads served by {readers} "
                        f"node(s) per shard" + ("" if o.redis_read_replicas else " (replicas add read capacity "
                                                "only with redis.read_from_replicas)"),
        "redis_network": f"{f.redis_request_bytes_per_command:.0f} B request, {f.redis_reply_bytes_per_command:.0f} B "
                         f"reply per HMGET: {to_redis:,.1f} MB/s to and {from_redis:,.1f} MB/s from Redis in all",
        "broker_network": f"{f.input_record_bytes:.0f} B per input and {f.output_record_bytes:.0f} B per prediction "
                          f"record, plus a {KAFKA_BATCH_HEADER_BYTES} B RecordBatch header per "
                          f"{o.input_batch_records} inputs and per {max(1.0, p.batch_events / p.partitions):.2g} "
                          f"prediction(s) (a worker batch of {p.batch_events} over {p.partitions} partitions); "
                          f"no compression; replication factor {o.replication_factor}; {o.downstream_consumers} "
                          "downstream reader(s) of the predictions",
        "brokers_for_network": f"{o.broker_mb_s:g} MB/s each way per broker (network only: disks, partition "
                               "counts and cross-AZ cost are separate limits)",
    }


def load_figures(path: Path) -> Figures:
    """The figures ``measure`` wrote (its ``figures`` object)."""
    try:
        data = json.loads(path.read_text())["figures"]
        data["redis_max_commands_by_depth"] = {int(d): float(r) for d, r in
                                               data["redis_max_commands_by_depth"].items()}
        return Figures(**data)
    except FileNotFoundError:
        raise CapacityError(f"{path} not found: run `python -m bench.capacity measure` first") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CapacityError(f"{path} does not hold capacity figures: {exc}") from exc


ROWS = [("worker processes", "worker_processes"), ("replicas", "replicas"), ("cores", "cores"),
        ("input partitions", "partitions"), ("events per batch", "batch_events"),
        ("Redis shards", "redis_shards"), ("Redis HMGET/s", "redis_commands_per_s"),
        ("broker MB/s in", "broker_in_mb_s"), ("broker MB/s out", "broker_out_mb_s"),
        ("brokers (network)", "brokers_for_network")]
ASSUMPTION_OF = {"redis_commands_per_s": "redis_network", "broker_in_mb_s": "broker_network",
                 "broker_out_mb_s": "broker_network"}


def render(plan: Plan) -> str:
    lines = [f"Capacity plan for {plan.target_eps:,.0f} events/s"]
    said: set[str] = set()
    for label, key in ROWS:
        value, source = getattr(plan, key), ASSUMPTION_OF.get(key, key)
        why = "" if source in said else plan.assumptions.get(source, "")
        said.add(source)
        lines.append(f"  {label:<18} {value:>12,}   {why}".rstrip())
    return "\n".join(lines)


def options_from(args: argparse.Namespace) -> Options:
    names = Options.__dataclass_fields__
    return Options(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def plan_command(args: argparse.Namespace) -> None:
    options = options_from(args)
    options.check()  # a bad option is named even when the figures file is the next problem
    plan = make_plan(load_figures(args.figures), options)
    print(json.dumps(asdict(plan), indent=1) if args.json else render(plan))


def plot_command(args: argparse.Namespace) -> None:
    """Replicas, cores and Redis shards against the target rate, on log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = load_figures(args.figures)
    rates = [10 ** (4 + i / 8) for i in range(25)]  # 10k to 10M events/s
    plans = [make_plan(figures, options_from(argparse.Namespace(**{**vars(args), "target_eps": r}))) for r in rates]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, key in (("worker processes (cores)", "worker_processes"), ("input partitions", "partitions"),
                       ("Redis shards", "redis_shards"), ("brokers (network)", "brokers_for_network")):
        ax.step(rates, [getattr(p, key) for p in plans], where="post", label=label)
    ax.set(xscale="log", yscale="log", xlabel="target events/s", ylabel="count",
           title=f"Capacity plan (headroom {args.headroom:.0%}, Redis at {args.redis_utilisation:.0%})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


def plan_arguments(ap: argparse.ArgumentParser) -> None:
    d = Options(target_eps=1)
    ap.add_argument("--figures", type=Path, default=FIGURES, help="figures from `measure` (default: %(default)s)")
    ap.add_argument("--headroom", type=float, default=d.headroom, help="share of each process kept free")
    ap.add_argument("--cores-per-replica", type=int, default=d.cores_per_replica,
                    help="cores per replica, one worker process each")
    ap.add_argument("--basis", choices=["throughput", "cpu"], default=d.basis, help="a process's events/s: "
                    "1 / CPU per event (default: a core of its own), or the measured throughput (shared cores)")
    ap.add_argument("--partition-factor", type=float, default=d.partition_factor,
                    help="input partitions per consumer process")
    ap.add_argument("--max-partition-mb-s", type=float, default=d.max_partition_mb_s)
    ap.add_argument("--batch-events", type=int, default=None, help="events per worker batch (default: the rate "
                    "arriving within batch.latency_budget_ms, capped at batch.max_events)")
    ap.add_argument("--latency-budget-ms", type=float, default=d.latency_budget_ms)
    ap.add_argument("--max-batch-events", type=int, default=d.max_batch_events)
    ap.add_argument("--redis-utilisation", type=float, default=d.redis_utilisation,
                    help="share of a shard's measured maximum to plan for")
    ap.add_argument("--redis-read-replicas", type=int, default=d.redis_read_replicas,
                    help="replicas per shard serving reads (redis.read_from_replicas)")
    ap.add_argument("--redis-max-per-shard", type=float, default=None,
                    help="HMGET/s one shard carries at any depth (default: redis-benchmark's, by depth)")
    ap.add_argument("--replication-factor", type=int, default=d.replication_factor)
    ap.add_argument("--broker-mb-s", type=float, default=d.broker_mb_s, help="network per broker, each way")
    ap.add_argument("--downstream-consumers", type=int, default=d.downstream_consumers)
    ap.add_argument("--input-batch-records", type=int, default=d.input_batch_records)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    measure = sub.add_parser("measure", help="measure the figures on this machine")
    measure.add_argument("--runs", type=int, default=3, help="contract-check runs (the median is kept)")
    measure.add_argument("--n", type=int, default=100_000, help="events per contract-check run")
    measure.add_argument("--out", type=Path, default=FIGURES)
    plan = sub.add_parser("plan", help="partitions, replicas, cores and shards for a target rate")
    plan.add_argument("--target", dest="target_eps", type=float, required=True, help="events/s")
    plan.add_argument("--json", action="store_true")
    plan_arguments(plan)
    plot = sub.add_parser("plot", help="the plan against the target rate, as a PNG")
    plot.add_argument("--out", type=Path, default=FIGURES.with_name("plan.png"))
    plan_arguments(plot)
    args = ap.parse_args(argv)
    try:
        if args.command == "measure":
            from bench.capacity_measure import measure_command

            measure_command(args)
        else:
            (plan_command if args.command == "plan" else plot_command)(args)
    except CapacityError as exc:
        sys.exit(f"capacity: {exc}")


if __name__ == "__main__":
    main()
