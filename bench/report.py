"""The benchmark's picture: throughput against the baselines, the latency CDF, stage costs,
and batch sizes — one PNG beside the JSON."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen first
import numpy as np

STAGES = ("decode", "features", "assemble", "inference", "encode", "produce", "commit")


def render(results: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"inference worker benchmark — {results['machine']['summary']}", fontsize=11)
    _throughput(axes[0][0], results)
    _latency(axes[0][1], results.get("latency"), results.get("broker_floor"))
    _stages(axes[1][0], results)
    _batches(axes[1][1], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(ax: Any, results: dict[str, Any]) -> None:
    bars = {name: r["throughput_eps"] for name, r in results["throughput"].items() if r.get("throughput_eps")}
    names = list(bars)
    ax.bar([textwrap.fill(n, 16) for n in names], [bars[n] for n in names],
           color=["#2a6f97" if n.startswith("worker") else "#aaaaaa" for n in names])
    reference = bars.get("worker (fraud contract)")
    for i, name in enumerate(names):
        label = f"{bars[name]:,.0f}/s" + (f"\n×{reference / bars[name]:.1f} slower" if reference and
                                           not name.startswith("worker") else "")
        ax.text(i, bars[name], label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("events per second (one process, backlog)")
    ax.set_title("Throughput, side by side")
    ax.tick_params(axis="x", labelsize=8)


def _latency(ax: Any, latency: dict[str, Any] | None, floor: dict[str, Any] | None) -> None:
    ax.set_title("Worker-added latency (receive → output acknowledged)")
    if not latency or not latency.get("samples"):
        ax.text(0.5, 0.5, "not measured", ha="center")
        return
    for key, label, style in (("samples", "receive → acknowledged", "-"),
                              ("ack_samples", "of which waiting for the broker's ack", ":")):
        samples = sorted(latency.get(key) or [])
        if samples:
            weights = np.cumsum([s[1] for s in samples], dtype=float)
            ax.plot([s[0] for s in samples], weights / weights[-1], style, color="#2a6f97", label=label)
    ax.legend(fontsize=8, loc="lower right")
    for pct, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        ax.axvline(latency[key], ls="--", color="#888888", lw=0.8)
        ax.text(latency[key], pct, f" p{int(pct * 100)} {latency[key]:.2f} ms", fontsize=8, va="center")
    if floor:
        ax.text(0.02, 0.95, f"the broker alone (a producer and a consumer, no worker):\n"
                f"ack p50 {floor['ack_p50_ms']:.1f} ms, p99 {floor['ack_p99_ms']:.1f} ms",
                transform=ax.transAxes, fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_xlabel(f"ms, at {latency['rate']:,.0f} events/s offered")
    ax.set_ylabel("share of events")


def _stages(ax: Any, results: dict[str, Any]) -> None:
    runs = {name: r["stage_us_per_event"] for name, r in results["throughput"].items() if "stage_us_per_event" in r}
    bottom = np.zeros(len(runs))
    for stage in STAGES:
        values = np.array([r.get(stage, 0.0) for r in runs.values()])
        ax.bar(list(runs), values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("µs per event")
    ax.set_title("Time per stage")
    ax.legend(fontsize=8)


_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


def _batches(ax: Any, results: dict[str, Any]) -> None:
    labels = [f"<={e}" for e in _EDGES]
    for name, r in results["throughput"].items():
        if "batch_sizes" in r:
            ax.plot(labels, [r["batch_sizes"].get(label, 0) for label in labels], marker="o", label=f"{name} (backlog)")
    latency = results.get("latency")
    if latency and latency.get("samples"):
        counts = np.histogram([s[1] for s in latency["samples"]], bins=[0, *_EDGES])[0]
        ax.plot(labels, counts, marker="s", label=f"at {latency['rate']:,.0f}/s offered")
    ax.set_yscale("symlog")
    ax.set_title("Batch sizes")
    ax.set_ylabel("batches")
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.legend(fontsize=8)
