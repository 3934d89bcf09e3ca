"""The arithmetic of model quality: reference bins, PSI, exact sliding windows, accuracy figures
(compared with scikit-learn's), and reference files and cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, precision_score, recall_score, roc_auc_score

from worker.quality import accuracy
from worker.quality.bins import FLOOR, Bins, BinsError, psi
from worker.quality.reference import Reference, from_card, from_file
from worker.quality.window import SlidingBins


def test_a_value_on_an_edge_falls_in_the_bin_above_it() -> None:
    bins = Bins(np.array([0.0, 1.0]), np.array([0.0, 0.4, 0.6]))  # the shared card's card_present
    assert bins.index(np.array([-0.5, 0.0, 0.5, 1.0, 7.0, np.nan])).tolist() == [0, 1, 1, 2, 2, 2]


def test_psi_is_the_textbook_sum_with_floored_shares() -> None:
    shares = np.array([0.25, 0.25, 0.5, 0.0])
    counts = np.array([10, 30, 60, 0])
    a, e = np.maximum(counts / 100, FLOOR), np.maximum(shares, FLOOR)
    assert psi(counts, shares) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(np.array([25, 25, 50, 0]), shares) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(psi(np.zeros(4), shares))


def test_decile_bins_of_values_hold_a_tenth_each() -> None:
    values = np.random.default_rng(1).normal(size=100_000)
    bins = Bins.of_values(values)
    assert len(bins.edges) == 9 and bins.shares == pytest.approx(np.full(10, 0.1), abs=1e-3)
    assert psi(np.bincount(bins.index(values), minlength=bins.size), bins.shares) < 1e-4
    constant = Bins.of_values(np.zeros(50))
    assert constant.edges.tolist() == [0.0] and constant.shares.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("edges, shares, problem", [
    ([1.0, 0.5], [0.3, 0.3, 0.4], "ascending"),
    ([1.0], [0.5, 0.6], "sum to 1"),
    ([1.0], [1.0], "need 2 shares"),
])
def test_malformed_bins_are_refused_with_the_reason(edges: list[float], shares: list[float], problem: str) -> None:
    with pytest.raises(BinsError, match=problem):
        Bins.parse({"edges": edges, "shares": shares}, "amount")
    with pytest.raises(BinsError, match="amount: expected"):
        Bins.parse({"edges": edges}, "amount")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 50))
def test_the_window_holds_exactly_the_last_rows(batch_sizes: list[int], capacity: int) -> None:
    rng = np.random.default_rng(sum(batch_sizes) + capacity)
    window = SlidingBins([3, 5], capacity)
    rows = np.zeros((0, 2), dtype=np.int64)
    for n in batch_sizes:
        batch = np.stack([rng.integers(0, 3, n), rng.integers(0, 5, n)], axis=1)
        window.add(batch)
        rows = np.concatenate([rows, batch])
    last = rows[-capacity:]
    first, second = window.column_counts()
    assert window.filled == len(last)
    assert first.tolist() == np.bincount(last[:, 0], minlength=3).tolist()
    assert second.tolist() == np.bincount(last[:, 1], minlength=5).tolist()


def test_window_psi_equals_psi_per_column() -> None:
    window = SlidingBins([2, 3], 100)
    rows = np.random.default_rng(2).integers(0, 2, (80, 2))
    window.add(rows)
    shares = np.array([0.5, 0.5, 0.2, 0.3, 0.5])
    got = window.psi(shares)
    assert got[0] == pytest.approx(psi(np.bincount(rows[:, 0], minlength=2), shares[:2]))
    assert got[1] == pytest.approx(psi(np.bincount(rows[:, 1], minlength=3), shares[2:]))


def test_accuracy_figures_equal_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < 0.1
    scores = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1), 2)  # rounded: many ties
    got = accuracy.accuracy(scores, labels, 0.5)
    assert got.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got.precision == pytest.approx(precision_score(labels, scores >= 0.5))
    assert got.recall == pytest.approx(recall_score(labels, scores >= 0.5))
    assert got.log_loss == pytest.approx(log_loss(labels, scores), rel=1e-9)
    assert (got.events, got.positives) == (5000, int(labels.sum()))


def test_undefined_accuracy_figures_are_nan() -> None:
    got = accuracy.accuracy(np.array([0.1, 0.2]), np.array([False, False]), 0.5)
    assert np.isnan(got.auc) and np.isnan(got.precision) and np.isnan(got.recall)


def test_calibration_bins_average_scores_and_outcomes() -> None:
    scores = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    labels = np.array([False, True, False, True, True])
    mean, rate, count = accuracy.calibration(scores, labels, bins=10)
    assert mean.tolist() == pytest.approx([0.05, 0.135, 0.975])
    assert rate.tolist() == [0.0, 0.5, 1.0] and count.tolist() == [1, 2, 2]


def test_a_reference_file_round_trips_and_a_card_gives_feature_and_score_bins(tmp_path: Path) -> None:
    bins = Bins(np.array([1.0, 2.0]), np.array([0.2, 0.3, 0.5]))
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(Reference({"amount": bins}, bins).to_json(rows=3)))
    read = from_file(path)
    assert read.features["amount"].edges.tolist() == [1.0, 2.0] and read.score is not None
    card = {"reference_stats": {"amount": {"mean": 1, "bins": bins.to_json()}, "mcc": {"mean": 2}},
            "score_stats": {"bins": bins.to_json()}}
    from_cards = from_card(card)
    assert from_cards is not None and list(from_cards.features) == ["amount"] and from_cards.score is not None
    assert from_card({"reference_stats": {"mcc": {"mean": 2}}}) is None
    with pytest.raises(BinsError, match=r"reference_stats\.amount\.bins"):
        from_card({"reference_stats": {"amount": {"bins": {"edges": [1.0], "shares": [1.0]}}}})


def test_few_values_get_a_bin_each_and_a_spike_gets_its_own_bin() -> None:
    counts = np.repeat([0.0, 1.0, 2.0, 5.0], [70, 20, 5, 5])
    few = Bins.of_values(counts)
    assert few.edges.tolist() == [0.0, 1.0, 2.0, 5.0] and few.shares.tolist() == [0.0, 0.7, 0.2, 0.05, 0.05]
    rng = np.random.default_rng(4)
    mostly_zero = np.where(rng.random(10_000) < 0.8, 0.0, rng.exponential(10.0, 10_000) + 0.01)
    spiked = Bins.of_values(mostly_zero)
    zero_bin = spiked.index(np.array([0.0]))[0]
    assert spiked.shares[zero_bin] == pytest.approx(0.8, abs=0.02), "the zeros alone in their bin"
    shifted = np.where(rng.random(10_000) < 0.5, 0.0, rng.exponential(10.0, 10_000) + 0.01)
    assert psi(np.bincount(spiked.index(shifted), minlength=spiked.size), spiked.shares) > 0.2
