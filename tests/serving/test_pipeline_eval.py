"""`recstack eval artifacts` (serving/pipeline_eval.py): the served pipeline's offline figures,
torch-free, against training's evaluator (docs/architecture.md §5)."""

import json

import pytest
from tiny_data import prepared_log

from recstack.cli import main
from recstack.dataset_dir import load_dataset
from recstack.eval_set import build_eval_set, stored_split
from recstack.ranking_metrics import accuracy_metrics
from recstack.serving.full_ranking import full_ranking
from recstack.serving.pipeline_eval import eval_artifacts, list_metrics, user_requests
from recstack.serving.pipeline_run import run_pipeline
from recstack.serving.ranking import Ranker
from recstack.serving.retrieval import Retriever

ACCURACY = [f"{m}@{k}" for m in ("hr", "recall", "ndcg", "mrr") for k in (10, 20)]
ALL_HISTORY = 10_000  # longer than any ML-100K history: requests carry the whole history


@pytest.fixture(scope="module")
def test_set(ml100k_artifacts):
    data = load_dataset(ml100k_artifacts["dataset"])
    frame = stored_split(data.interactions, "loo")
    return data, frame, build_eval_set(frame, "test", data.n_items)


@pytest.fixture(scope="module")
def every_candidate(ml100k_artifacts, tmp_path_factory, test_set):
    """The report with every item a candidate: the ranker then ranks the whole catalogue."""
    out = tmp_path_factory.mktemp("pipeline-eval") / "all.json"
    paths = {side: ml100k_artifacts[side] for side in ("retriever", "ranker", "dataset")}
    n_items = test_set[0].n_items
    eval_artifacts(**paths, retrieve_n=n_items, history_limit=ALL_HISTORY, out=out)
    return json.loads(out.read_text())


def test_the_torch_free_full_ranking_equals_the_torch_evaluator(ml100k_artifacts, test_set):
    from recstack.training.eval.evaluator import evaluate
    from recstack.training.tasks.next_item import NextItemTask

    _, _, eval_set = test_set
    ranker = Ranker.load(ml100k_artifacts["ranker"])
    checkpoint = ranker.artifact.manifest.training.checkpoint
    task = NextItemTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    task.net.eval()
    history_len = task.net.config.history_len
    expected = evaluate(
        lambda b: task.net.score_all(*b.recent(history_len)), eval_set, device="cpu"
    ).metrics
    found, _ = list_metrics(full_ranking(ranker.artifact, eval_set, 20), eval_set, (10, 20))
    for name in [*ACCURACY, "coverage@10", "pop_lift@10"]:
        assert found[name] == pytest.approx(expected[name], abs=1e-3), name
    assert found["ndcg@10"] > 0  # the ranker finds some targets: the comparison is not 0 == 0


def test_with_every_item_a_candidate_the_pipeline_is_the_full_ranking(every_candidate):
    for name in [*ACCURACY, "coverage@10", "coverage@20"]:
        found, full = every_candidate["pipeline"][name], every_candidate["ranker_full"][name]
        assert found == pytest.approx(full, abs=1e-6), name
    n = every_candidate["retrieve_n"]
    assert every_candidate["retrieval"][f"recall@{n}"] == 1.0  # unseen targets are all there
    assert every_candidate["pipeline_over_full"]["ndcg@10"] == pytest.approx(1.0, abs=1e-6)
    assert every_candidate["n_popular_fallback"] == 0  # every user got candidates
    assert set(every_candidate["segments"]["pipeline"]) >= {"activity", "gender", "age"}


def test_retrieval_recall_rises_with_the_number_of_candidates(ml100k_artifacts, test_set):
    data, frame, eval_set = test_set
    retriever = Retriever.load(ml100k_artifacts["retriever"])
    ranker = Ranker.load(ml100k_artifacts["ranker"])
    requests = user_requests(data, frame, eval_set, retriever, ALL_HISTORY)
    assert {"ts"} <= set(requests[0].context)  # the target event's time
    recall = []
    for n in (10, 100, 400):
        ranks = run_pipeline(retriever, ranker, eval_set, requests, n, 10).retrieval
        recall.append(accuracy_metrics(ranks, eval_set.target_indptr, [n])[f"recall@{n}"].mean())
    assert 0 < recall[0] < recall[1] < recall[2] < 1, recall


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("other-vocab")
    return prepared_log(root, ["a", "a", "a", "b", "b", "b"], ["x", "y", "z"] * 2, [1, 2, 3] * 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "other"}, "was exported from dataset"),
        ({"split": "weekly"}, "unknown split 'weekly'"),
        ({"ranker": "retriever"}, "'two_tower' model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    ml100k_artifacts, other_dataset, tmp_path, capsys, change, message
):
    paths = {side: str(ml100k_artifacts[side]) for side in ("retriever", "ranker", "dataset")}
    args = {**paths, "split": "loo", "out": str(tmp_path / "report.json")}
    for key, value in change.items():
        args[key] = str(other_dataset) if value == "other" else paths.get(value, value)
    argv = ["eval", "artifacts", *(f"--{k}={v}" for k, v in args.items())]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "report.json").exists()
