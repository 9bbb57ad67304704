"""`recstack eval artifacts`: the served pipeline's offline quality, from artifacts alone
(docs/architecture.md §5).

The evaluated users, histories and targets are those of training's evaluator
(`recstack.eval_set`, the dataset's stored split). Each user becomes the request a replica
builds (serving/pipeline_run.py) and is answered by the serving classes, without torch:

- retrieval recall@N: the share of targets in the retriever's top N (N = retrieve_n);
- pipeline HR / NDCG / MRR / Recall @k: each target's position in the final top-k list (absent
  = a miss), coverage and popularity lift of those lists, and the same per user segment;
- the ranker's full ranking on the same users (serving/full_ranking.py), and the ratio
  pipeline NDCG@k / full-ranking NDCG@k: how much candidate retrieval loses.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from recstack.artifact import Artifact, check_same_vocab
from recstack.dataset_dir import PreparedDataset, load_dataset
from recstack.errors import DataError, RecstackError
from recstack.eval_report import metrics_table, segment_table, table_columns, write_json
from recstack.eval_set import TARGET_CODE, EvalSet, build_eval_set, stored_split
from recstack.feature_codes import TS_KINDS
from recstack.item_index import Method
from recstack.manifest import CONTENT_HASH
from recstack.ranking_metrics import accuracy_metrics, beyond_accuracy_of
from recstack.schema import ITEM_ID, SPLIT, TS, USER_ID, USER_IDX
from recstack.segments import segment_metrics, segments_to_dict
from recstack.serving.full_ranking import Rankings, full_ranking
from recstack.serving.pipeline_run import UserRequest, request_latency, run_pipeline
from recstack.serving.ranking import Ranker
from recstack.serving.retrieval import Retriever
from recstack.serving.service import ServiceSettings
from recstack.user_files import ORIGINAL_HASH

PIPELINE, FULL = "pipeline", "ranker_full"


@dataclass
class UserMetrics:
    """Per-user metric arrays of one ranking, for segments (recstack.segments)."""

    users: np.ndarray
    history_lengths: np.ndarray
    per_user: dict[str, np.ndarray]


def check_dataset(dataset: PreparedDataset, *artifacts: Artifact) -> None:
    """Each artifact must come from this dataset (its hash, or the hash before an erasure),
    with the same item vocabulary, or from the version this one extends (`recstack data
    extend` keeps every item_idx, §4): an older model judged on newer events, blind to the
    items added since."""
    hashes = {dataset.manifest.get(CONTENT_HASH), dataset.manifest.get(ORIGINAL_HASH)} - {None}
    item_ids = dataset_item_ids(dataset)
    for artifact in artifacts:
        ids, origin = artifact.catalog.item_ids, artifact.catalog.vocab_hash
        same = origin in hashes and ids == item_ids
        extended = origin == dataset.base_hash and ids == item_ids[: len(ids)]
        if not (same or extended):
            raise DataError(
                f"{artifact.path} was exported from dataset {origin[:12]}, "
                f"not {dataset.path} ({str(dataset.manifest.get(CONTENT_HASH))[:12]}) or the "
                "version it extends; evaluate it on the dataset it was trained on"
            )


def dataset_item_ids(dataset: PreparedDataset) -> list[str]:
    """Item ids by item_idx, "" at PAD_IDX 0 (as an artifact's catalogue lists them)."""
    return ["", *dataset.items.sort("item_idx")[ITEM_ID].cast(pl.String).to_list()]


def recent_targets(frame: pl.DataFrame, target: str, since: int) -> pl.DataFrame:
    """`frame` with only the users whose first `target` event is after `since` keeping their
    targets: a recent holdout, e.g. the events a service logged after a model's data cut-off."""
    code = TARGET_CODE[target]
    recent = (
        frame.filter(pl.col(SPLIT) == code)
        .group_by(USER_IDX)
        .agg(pl.col(TS).min())
        .filter(pl.col(TS) > since)[USER_IDX]
    )
    return frame.filter((pl.col(SPLIT) != code) | pl.col(USER_IDX).is_in(recent.implode()))


def holdout(
    data: PreparedDataset, split: str, target: str, since: int | None
) -> tuple[pl.DataFrame, EvalSet]:
    """The split's events (recent targets only when `since` is given) and the users evaluated
    on them; DataError when there are none."""
    frame = stored_split(data.interactions, split)
    if since is not None:
        frame = recent_targets(frame, target, since)
    eval_set = build_eval_set(frame, target, data.n_items)
    if eval_set.n_users == 0:
        after = "" if since is None else f" after ts {since}"
        raise DataError(
            f"{data.path}: the {split!r} split has no {target} targets{after} with a history; "
            "choose another split or target"
        )
    return frame, eval_set


def user_requests(
    dataset: PreparedDataset,
    frame: pl.DataFrame,
    eval_set: EvalSet,
    retriever: Retriever,
    history_limit: int,
) -> list[UserRequest]:
    """The request of each evaluated user: the last `history_limit` history items, the user
    id, and the ts plus the retriever's context columns of the user's first target event."""
    specs = (retriever.artifact.features or {}).get("context", [])
    fields = [s["name"] for s in specs if s["kind"] not in TS_KINDS and s["name"] in frame.columns]
    first = (  # the dataset's rows are in time order per user (docs/architecture.md §3)
        frame.filter(pl.col(SPLIT) == TARGET_CODE[eval_set.target])
        .group_by(USER_IDX, maintain_order=True)
        .first()
        .select(USER_IDX, TS, *(pl.col(f).cast(pl.String) for f in fields))
    )
    users = pl.DataFrame({USER_IDX: eval_set.users}).with_columns(pl.col(USER_IDX).cast(pl.Int64))
    contexts = users.join(
        first.with_columns(pl.col(USER_IDX).cast(pl.Int64)),
        on=USER_IDX,
        how="left",
        maintain_order="left",
    )
    user_ids = dataset.users.sort(USER_IDX)[USER_ID].cast(pl.String).to_list()
    item_ids = dataset_item_ids(dataset)  # items added after the artifact: unknown ids to it
    return [
        UserRequest(
            history=[item_ids[i] for i in eval_set.history(row)[-history_limit:]],
            context={k: v for k, v in context.items() if k != USER_IDX and v is not None},
            user_id=user_ids[int(user)],
        )
        for row, (user, context) in enumerate(
            zip(eval_set.users, contexts.iter_rows(named=True), strict=True)
        )
    ]


def list_metrics(rankings: Rankings, eval_set: EvalSet, ks: Sequence[int]) -> tuple[dict, dict]:
    """(mean metrics, per-user arrays) of one ranking: accuracy @ks, coverage and pop lift."""
    per_user = accuracy_metrics(rankings.ranks, eval_set.target_indptr, ks)
    beyond_user, beyond_all = beyond_accuracy_of(eval_set, rankings.top, ks)
    means = {name: float(np.nanmean(values)) for name, values in per_user.items()}
    return means | beyond_all, per_user | beyond_user


def _segments(per_user: dict, eval_set: EvalSet, users: pl.DataFrame, ks) -> dict:
    names = [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
    metrics = UserMetrics(eval_set.users, eval_set.history_lengths, per_user)
    return segments_to_dict(segment_metrics(metrics, users, metrics=names))


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)  # piped: keep the table wide


def eval_artifacts(
    retriever: Path,
    ranker: Path,
    dataset: Path,
    split: str = "loo",
    target: str = "test",
    retrieve_n: int = ServiceSettings.retrieve_n,
    history_limit: int = ServiceSettings.history_limit,
    ks: list[int] = [10, 20],  # noqa: B006 - never mutated; a list default reads well in --help
    index: Method = "auto",
    since: int | None = None,
    latency_requests: int = 0,
    out: Path | None = None,
) -> dict:
    """Evaluate the served pipeline (retriever top N -> ranker top k) from artifact dirs.

    No torch: the same Retriever and Ranker classes as the HTTP service answer one request per
    evaluated user (the history before the targets, the target event's context), and the
    ranker's full ranking over the catalogue is computed beside it from its ONNX model. Prints
    a table and writes a JSON report.

    Args:
        retriever: retriever artifact dir (two-tower or SASRec), as in the serve config.
        ranker: ranker artifact dir (SASRec).
        dataset: the prepared dataset both artifacts were exported from.
        split: "loo" or "temporal", the dataset's stored split.
        target: "test" (history = train + valid) or "valid" (history = train).
        retrieve_n: candidates the retriever hands the ranker (the serve config's retrieve_n).
        history_limit: most recent history items in a request (the serve config's).
        ks: cut-offs of the final lists.
        index: the retriever's search, as the serve config's `index`: auto, ann or exact.
        since: a recent holdout: only users whose targets come after this ts (unix seconds),
            e.g. a served model's data cut-off. Artifacts of the version the dataset extends
            are accepted, so an old and a new model are judged on the same new events.
        latency_requests: also time this many single requests (retrieve + rank, one at a time,
            the first evaluated users) on this machine: p50 / p99 ms in the report.
        out: JSON report path; default runs/eval_artifacts/<dataset name>-<split>-<target>.json.

    Returns:
        The JSON report as a dict, plus "out": the path written.
    """
    started = time.perf_counter()
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or retrieve_n < 1 or history_limit < 1:
        raise RecstackError(
            f"ks {ks}, retrieve_n {retrieve_n} and history_limit {history_limit} must be >= 1"
        )
    loaded_retriever = Retriever.load(Path(retriever), index)
    loaded_ranker = Ranker.load(Path(ranker))
    check_same_vocab(loaded_retriever.artifact, loaded_ranker.artifact)
    data = load_dataset(Path(dataset))
    check_dataset(data, loaded_retriever.artifact, loaded_ranker.artifact)
    frame, eval_set = holdout(data, split, target, since)
    requests = user_requests(data, frame, eval_set, loaded_retriever, history_limit)
    seconds = {"load_s": time.perf_counter() - started}

    tick = time.perf_counter()
    served = run_pipeline(
        loaded_retriever,
        loaded_ranker,
        eval_set,
        requests,
        retrieve_n,
        max(ks),
        dataset_item_ids(data),
    )
    seconds["pipeline_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    full = full_ranking(loaded_ranker.artifact, eval_set, max(ks))
    seconds["full_ranking_s"] = time.perf_counter() - tick

    retrieval = accuracy_metrics(served.retrieval, eval_set.target_indptr, [retrieve_n])
    recall_names = (f"recall@{retrieve_n}", f"hr@{retrieve_n}")  # targets / users hit in top N
    pipeline, pipeline_users = list_metrics(served.pipeline, eval_set, ks)
    ranker_full, full_users = list_metrics(full, eval_set, ks)
    ratio = {
        f"ndcg@{k}": pipeline[f"ndcg@{k}"] / ranker_full[f"ndcg@{k}"]
        if ranker_full[f"ndcg@{k}"] > 0
        else float("nan")
        for k in ks
    }
    latency = None
    if latency_requests > 0:
        sample = requests[:latency_requests]
        latency = request_latency(loaded_retriever, loaded_ranker, sample, retrieve_n, max(ks))
    seconds["total_s"] = time.perf_counter() - started
    payload = {
        "dataset": str(data.path),
        "dataset_hash": data.manifest.get(CONTENT_HASH),
        "artifacts": {
            side: {
                "path": str(a.path),
                "version": a.version,
                "model_kind": a.kind.value,
                "content_hash": a.manifest.content_hash,
            }
            for side, a in (
                ("retriever", loaded_retriever.artifact),
                ("ranker", loaded_ranker.artifact),
            )
        },
        "split": split,
        "target": target,
        "since": since,
        "retrieve_n": retrieve_n,
        "history_limit": history_limit,
        "index": index,
        "ks": ks,
        "n_users": eval_set.n_users,
        "n_targets": int(eval_set.target_items.shape[0]),
        "n_items": eval_set.n_items,
        "n_popular_fallback": served.n_popular,
        "retrieval": {name: float(retrieval[name].mean()) for name in recall_names},
        PIPELINE: pipeline,
        FULL: ranker_full,
        "pipeline_over_full": ratio,
        "latency": latency,
        "segments": {
            PIPELINE: _segments(pipeline_users, eval_set, data.users, ks),
            FULL: _segments(full_users, eval_set, data.users, ks),
        },
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
    }
    default = Path("runs") / "eval_artifacts" / f"{data.path.name}-{split}-{target}.json"
    out = write_json(default if out is None else Path(out), payload)
    _print(_console(), payload, ks, out)
    payload["out"] = str(out)
    return payload


def _print(console: Console, payload: dict, ks: list[int], out: Path) -> None:
    columns = table_columns(ks, show_recall=payload["n_targets"] > payload["n_users"])
    columns = [c for c in columns if not c.startswith("novelty")]  # not computed here
    versions = [a["version"] for a in payload["artifacts"].values()]
    title = (
        f"Served pipeline — {payload['split']} split, {payload['target']}, "
        f"{payload['n_users']} users, retrieve {payload['retrieve_n']} of "
        f"{payload['n_items']} items ({' + '.join(versions)})"
    )
    rows = {PIPELINE: payload[PIPELINE], f"{FULL} (all items)": payload[FULL]}
    console.print(metrics_table(title, rows, columns))
    n = payload["retrieve_n"]
    ratio = payload["pipeline_over_full"][f"ndcg@{ks[0]}"]
    console.print(
        f"retrieval recall@{n} = {payload['retrieval'][f'recall@{n}']:.4f}; "
        f"pipeline / full-ranking NDCG@{ks[0]} = {ratio:.4f}"
    )
    segments = {name: {"segments": payload["segments"][name]} for name in (PIPELINE, FULL)}
    console.print(segment_table(segments, f"ndcg@{ks[0]}"))
    if payload["n_popular_fallback"]:
        console.print(f"[dim]{payload['n_popular_fallback']} users answered by popularity[/dim]")
    console.print(
        f"[dim]wrote {out} in {payload['seconds']['total_s']:.1f} s[/dim]", soft_wrap=True
    )
