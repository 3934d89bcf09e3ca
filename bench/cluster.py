"""Throughput with the features on a 3-shard Redis Cluster against one Redis, in the same session.

    python -m bench.cluster                      # 3 rounds of each, 50,000 events a run
    python -m bench.cluster --rounds 5 --n 100000 --read-from-replicas

Each run is the shared contract check (``../shared/tools/contract_check.py``, backlog mode), and the
runs alternate, single node then cluster, so that drift on the machine hits both alike. The single-node
runs are the check as it is (it starts its own redis-server). The check loads the features itself
with gen.py over redis-py's plain client, which cannot write to a cluster (a node answers ``MOVED``
for the slots of the others, and the seed list is no URL it parses). So for the cluster runs this
starts a cluster (3 masters, a replica each, local processes), has gen.py write the features to a
scratch single Redis, copies them into the cluster with the worker's own loader (what ``worker
features load`` does, over redis-py's ``RedisCluster``), and passes the check that scratch Redis
(where it loads them again, unread) and, with ``--worker``, a worker pointed at the cluster:
``--redis-url`` with its seed nodes and ``WORKER_REDIS__CLUSTER=true``.

Then the feature stage alone, in this process, on the same features in the scratch Redis and in the
cluster (alternated, ``--rounds`` times): the worker's fetch of both entities for batches of 1,000
events, in µs per event; it is what the cluster changes, and far less noisy than a whole run on a
shared machine. Prints each run's JSON line (with the machine's 1-minute load average before it) and
a summary line with the medians, their ratio and the HMGETs each cluster node served; ``--out``
writes them as JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.redis_cluster import LocalRedisCluster, hashes
from worker.app.components import make_store
from worker.app.tools import entity_matcher, redis_client
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.devtools.loader import load_hashes
from worker.devtools.local import LocalRedis
from worker.features.fetcher import FeatureFetcher

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_CHECK = ROOT.parent / "shared" / "tools" / "contract_check.py"
CONFIG = ROOT / "bench" / "fraud-contract.yaml"
WORKER = (f"{shlex.quote(sys.executable)} -m worker run --config bench/fraud-contract.yaml --bootstrap-servers "
          "{bootstrap} --redis-url SEEDS --input-topic {input} --output-topic {output} --dlq-topic {dlq} "
          "--group-id {group}")


def gen_module() -> Any:
    sys.path.insert(0, str(CONTRACT_CHECK.parents[1] / "workload" / "fraud"))
    import gen

    return gen


def load_cluster(cluster: LocalRedisCluster, scratch_url: str) -> int:
    """gen.py's features (its default population, as the check loads them) into the cluster, by way of
    the scratch Redis; how many hashes."""
    gen = gen_module()
    parser = argparse.ArgumentParser()
    gen.population_args(parser)
    gen.cmd_features(argparse.Namespace(**{**vars(parser.parse_args([])), "redis": scratch_url}))
    settings = load_settings(CONFIG, {"redis": {"url": cluster.url, "cluster": True}})
    tally = load_hashes(redis_client(settings), ((item["key"], item) for item in hashes(scratch_url)),
                        entity_matcher(settings))
    cluster.wait_replicated()
    return tally.written


def feature_stage(redis_url: str, cluster: bool, records: list[dict[str, Any]], size: int = 1000) -> float:
    """The worker's feature fetch (both entities, distinct keys, one round trip or one pipeline per
    node) over every batch of ``size`` events, in this process: µs per event."""
    settings = load_settings(CONFIG, {"redis": {"url": redis_url, "cluster": cluster}})
    store = make_store(settings)
    fetcher = FeatureFetcher(store, compile_settings(settings).entities)
    batches = [records[i:i + size] for i in range(0, len(records), size)]
    fetcher.fetch(batches[0])  # connect (and read the slot map) outside the timing
    started = time.perf_counter()
    for batch in batches:
        fetcher.fetch(batch)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / len(records) * 1e6


def stage_medians(scratch_url: str, cluster_url: str, rounds: int, n: int = 50_000) -> dict[str, float]:
    """The feature stage on one Redis and on the cluster, alternated ``rounds`` times: median µs per event."""
    gen = gen_module()
    parser = argparse.ArgumentParser()
    gen.population_args(parser)
    records = [record for _, _, record in gen.event_stream(argparse.Namespace(**{**vars(parser.parse_args([])),
                                                                                  "n": n}))]
    us: dict[str, list[float]] = {"single": [], "cluster": []}
    for _ in range(rounds):
        us["single"].append(feature_stage(scratch_url, False, records))
        us["cluster"].append(feature_stage(cluster_url, True, records))
    return {f"feature_stage_us_per_event_{mode}": round(statistics.median(v), 2) for mode, v in us.items()}


def contract_run(n: int, extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One contract check: its JSON line, with the load average before it."""
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, str(CONTRACT_CHECK), "--n", str(n), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"contract_check printed no result (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {"load1_before": round(load, 2), **json.loads(lines[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--read-from-replicas", action="store_true", help="the cluster runs read from replicas")
    parser.add_argument("--out", type=Path, help="also write the runs and the summary here, as JSON")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        scratch = LocalRedis(workdir=Path(tmp)).start()
        cluster = LocalRedisCluster().start()
        try:
            print(f"loaded {load_cluster(cluster, scratch.url)} hashes into the cluster {cluster.url}", file=sys.stderr)
            cluster_env = {**env, "WORKER_REDIS__CLUSTER": "true",
                           "WORKER_REDIS__READ_FROM_REPLICAS": str(args.read_from_replicas).lower()}
            cluster_args = ["--redis", scratch.url, "--worker", WORKER.replace("SEEDS", cluster.url)]
            runs = []
            for _ in range(args.rounds):
                for mode, extra, run_env in (("single", [], env), ("cluster", cluster_args, cluster_env)):
                    runs.append({"mode": mode, **contract_run(args.n, extra, run_env)})
                    print(json.dumps(runs[-1]), flush=True)
            served = hmgets_by_node(cluster)
            stage = stage_medians(scratch.url, cluster.url, args.rounds)
        finally:
            cluster.close()
            scratch.stop()
    summary = {**summarize(runs), **stage, "cluster_hmgets_by_node": served}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")


def hmgets_by_node(cluster: LocalRedisCluster) -> dict[str, int]:
    """HMGETs each node served: the evidence that the cluster runs read the cluster, spread over its shards."""
    served = {}
    for port in cluster.running():
        with cluster.node_client(port) as client:
            stats: Any = client.info("commandstats")
        served[f"{cluster.role_of(port, port)}:{port}"] = int(stats.get("cmdstat_hmget", {}).get("calls", 0))
    return served


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    median = {mode: statistics.median(r.get("throughput_eps", 0) for r in runs if r["mode"] == mode)
              for mode in ("single", "cluster")}
    return {"median_eps_single": median["single"], "median_eps_cluster": median["cluster"],
            "cluster_over_single": round(median["cluster"] / max(median["single"], 1), 3),
            "all_ok": all(r["ok"] for r in runs), "runs_each": len(runs) // 2}


if __name__ == "__main__":
    main()
