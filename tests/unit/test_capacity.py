"""The capacity model's arithmetic (bench/capacity.py) on given figures, not measured ones."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench.capacity import (
    KAFKA_BATCH_HEADER_BYTES,
    CapacityError,
    Figures,
    Options,
    load_figures,
    main,
    make_plan,
    redis_max_at_depth,
    render,
)

FIGURES = Figures(worker_eps_per_process=50_000, worker_cpu_us_per_event=20.0, redis_commands_per_event=2,
                  redis_request_bytes_per_command=130, redis_reply_bytes_per_command=60,
                  redis_max_commands_by_depth={1: 40_000, 100: 400_000, 1000: 500_000},
                  input_record_bytes=80, output_record_bytes=56)


def test_a_known_input_gives_the_numbers_worked_by_hand() -> None:
    # 1M / (50k × 0.7 = 35k) = 28.6 → 29 processes; 2 cores each → 15 replicas, 30 processes, 30 cores;
    # partitions 2 per process = 60; a batch: 1M / 30 × 3 ms = 100 events → 200 HMGETs per batch.
    # Redis: 2M HMGET/s; at S shards each pipeline holds 200 / S, worth 40k + ln(200/S)/ln(100) × 360k
    # per shard: S = 10 gives 20 deep, 274k × 0.7 × 10 = 1.92M (short); S = 11 gives 267k × 7.7 = 2.06M.
    plan = make_plan(FIGURES, Options(target_eps=1_000_000, cores_per_replica=2))

    assert (plan.worker_processes, plan.replicas, plan.cores, plan.partitions) == (30, 15, 30, 60)
    assert plan.batch_events == 100
    assert plan.redis_commands_per_s == 2_000_000
    assert plan.redis_shards == 11
    depth = 200 / plan.redis_shards
    assert plan.redis_shards * 0.7 * redis_max_at_depth(FIGURES.redis_max_commands_by_depth, depth) >= 2_000_000
    fewer = plan.redis_shards - 1
    assert fewer * 0.7 * redis_max_at_depth(FIGURES.redis_max_commands_by_depth, 200 / fewer) < 2_000_000


def test_exact_fits_are_not_rounded_up_and_anything_more_is() -> None:
    figures = replace(FIGURES, worker_eps_per_process=50_000)
    exact = make_plan(figures, Options(target_eps=1_000_000, headroom=0.0))
    over = make_plan(figures, Options(target_eps=1_000_001, headroom=0.0))

    assert exact.worker_processes == 20
    assert over.worker_processes == 21


def test_headroom_shrinks_what_each_process_is_planned_for() -> None:
    none = make_plan(FIGURES, Options(target_eps=500_000, headroom=0.0))
    half = make_plan(FIGURES, Options(target_eps=500_000, headroom=0.5))

    assert none.worker_processes == 10
    assert half.worker_processes == 20


def test_the_basis_picks_the_cpu_figure_or_the_measured_throughput() -> None:
    figures = replace(FIGURES, worker_eps_per_process=14_000, worker_cpu_us_per_event=40.0)  # 25,000 per core

    assert make_plan(figures, Options(target_eps=100_000, headroom=0.0)).worker_processes == 4
    assert make_plan(figures, Options(target_eps=100_000, headroom=0.0, basis="throughput")).worker_processes == 8


def test_replicas_round_up_to_whole_replicas_of_cores() -> None:
    plan = make_plan(FIGURES, Options(target_eps=35_000 * 5, cores_per_replica=4))  # 5 processes needed

    assert (plan.replicas, plan.worker_processes, plan.cores) == (2, 8, 8)


@pytest.mark.parametrize("target", [1_000, 35_000, 123_456, 1_000_000, 7_000_000])
@pytest.mark.parametrize("factor", [1.0, 1.5, 3.0])
def test_partitions_are_never_fewer_than_consumer_processes(target: float, factor: float) -> None:
    plan = make_plan(FIGURES, Options(target_eps=target, partition_factor=factor))

    assert plan.partitions >= plan.worker_processes
    assert plan.partitions >= math.ceil(plan.worker_processes * factor)


def test_partitions_also_cap_the_rate_written_to_each() -> None:
    # 1M × 80 B = 80 MB/s of inputs; at 1 MB/s per partition that is 80, more than 2 × 29 processes
    plan = make_plan(FIGURES, Options(target_eps=1_000_000, max_partition_mb_s=1.0))

    assert plan.partitions == 80


def test_read_replicas_and_a_lower_utilisation_move_the_redis_shard_count() -> None:
    base = make_plan(FIGURES, Options(target_eps=2_000_000, batch_events=2000))
    with_replicas = make_plan(FIGURES, Options(target_eps=2_000_000, batch_events=2000, redis_read_replicas=1))
    cautious = make_plan(FIGURES, Options(target_eps=2_000_000, batch_events=2000, redis_utilisation=0.35))

    assert with_replicas.redis_shards < base.redis_shards < cautious.redis_shards


def test_the_shard_figure_is_interpolated_on_log_depth_and_never_extrapolated() -> None:
    by_depth = {1: 40_000.0, 100: 400_000.0, 1000: 500_000.0}

    assert redis_max_at_depth(by_depth, 0.5) == 40_000
    assert redis_max_at_depth(by_depth, 10) == pytest.approx(220_000)  # halfway on log10
    assert redis_max_at_depth(by_depth, 100) == 400_000
    assert redis_max_at_depth(by_depth, 10_000) == 500_000


def test_broker_traffic_counts_replication_readers_and_batch_headers() -> None:
    options = Options(target_eps=1_000_000, batch_events=600, replication_factor=3, input_batch_records=100)
    plan = make_plan(FIGURES, options)
    produced_in = 1e6 * (80 + KAFKA_BATCH_HEADER_BYTES / 100) / 1e6
    produced_out = 1e6 * (56 + KAFKA_BATCH_HEADER_BYTES / max(1, 600 / plan.partitions)) / 1e6
    replication = 2 * (produced_in + produced_out)

    assert plan.broker_in_mb_s == round(produced_in + produced_out + replication, 1)
    assert plan.broker_out_mb_s == round(produced_in + produced_out + replication, 1)  # one downstream reader
    assert plan.brokers_for_network == math.ceil(max(plan.broker_in_mb_s, plan.broker_out_mb_s) / 200)


@pytest.mark.parametrize("options", [Options(target_eps=0), Options(target_eps=-5), Options(target_eps=math.nan),
                                     Options(target_eps=math.inf), Options(target_eps=1, headroom=1.0),
                                     Options(target_eps=1, headroom=-0.1), Options(target_eps=1, cores_per_replica=0),
                                     Options(target_eps=1, redis_utilisation=0), Options(target_eps=1, batch_events=0),
                                     Options(target_eps=1, partition_factor=0.5)])
def test_bad_targets_and_options_are_refused_with_the_option_named(options: Options) -> None:
    with pytest.raises(CapacityError, match="--"):
        make_plan(FIGURES, options)


@pytest.mark.parametrize("figures", [replace(FIGURES, worker_eps_per_process=0),
                                     replace(FIGURES, redis_reply_bytes_per_command=-1),
                                     replace(FIGURES, input_record_bytes=math.nan),
                                     replace(FIGURES, redis_max_commands_by_depth={}),
                                     replace(FIGURES, redis_max_commands_by_depth={0: 1.0}),
                                     replace(FIGURES, redis_max_commands_by_depth={8: 0.0})])
def test_bad_figures_are_refused_with_the_figure_named(figures: Figures) -> None:
    with pytest.raises(CapacityError, match=r"figure|redis_max_commands_by_depth"):
        make_plan(figures, Options(target_eps=1000))


def test_every_printed_number_has_its_assumption_beside_it() -> None:
    plan = make_plan(FIGURES, Options(target_eps=1_000_000))
    text = render(plan)

    assert "1,000,000 events/s" in text
    assert "GIL" in text and "70%" in text and "replication factor 3" in text
    assert set(plan.assumptions) >= {"worker_processes", "partitions", "redis_shards", "broker_network"}


def test_the_command_line_plans_from_a_figures_file_and_prints_json(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"figures": {**vars(FIGURES), "redis_max_commands_by_depth": {
        str(d): r for d, r in FIGURES.redis_max_commands_by_depth.items()}}}))

    main(["plan", "--target", "1000000", "--cores-per-replica", "2", "--figures", str(path), "--json"])
    plan = json.loads(capsys.readouterr().out)

    assert (plan["replicas"], plan["partitions"]) == (15, 60)


def test_a_missing_or_foreign_figures_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CapacityError, match=r"run `python -m bench\.capacity measure` first"):
        load_figures(tmp_path / "absent.json")
    (tmp_path / "other.json").write_text('{"headline": {}}')
    with pytest.raises(CapacityError, match="does not hold capacity figures"):
        load_figures(tmp_path / "other.json")
    with pytest.raises(SystemExit, match=r"capacity: .*--target"):
        main(["plan", "--target", "0", "--figures", str(tmp_path / "other.json")])
