"""serving/batching.py: a batch runs once per model, and a failing call fails alone."""

import pytest

from recstack.serving.batching import grouped, unwrap


def run_squares(model: str, requests: list[int]) -> list[tuple[str, int]]:
    if any(r < 0 for r in requests):  # one poisoned element fails the whole run
        raise ValueError(f"negative request in a batch of {len(requests)}")
    return [(model, r * r) for r in requests]


def test_one_run_per_model_and_results_in_call_order():
    runs = []

    def run(model, requests):
        runs.append((model, list(requests)))
        return run_squares(model, requests)

    calls = [("a", 1), ("b", 2), ("a", 3), ("b", 4)]
    assert grouped(calls, run) == [("a", 1), ("b", 4), ("a", 9), ("b", 16)]
    assert runs == [("a", [1, 3]), ("b", [2, 4])]


def test_a_poisoned_call_fails_alone_and_its_batch_neighbours_succeed():
    calls = [("a", 1), ("a", -1), ("a", 3), ("b", 2)]
    results = grouped(calls, run_squares)
    assert results[0] == ("a", 1) and results[2] == ("a", 9) and results[3] == ("b", 4)
    assert isinstance(results[1], ValueError) and "batch of 1" in str(results[1])
    assert unwrap(results[0]) == ("a", 1)
    with pytest.raises(ValueError, match="negative"):
        unwrap(results[1])
