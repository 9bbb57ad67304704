"""Eval-set users through the served pipeline: the requests a replica builds, answered by the
same `Retriever.retrieve` and `Ranker.rank` that answer HTTP, in batches
(docs/architecture.md §5, §8).

A request carries the user's last `history_limit` history items (external ids, oldest first),
the context of the user's first target event and the user id. The retriever returns its top
`retrieve_n` (the history excluded); the ranker keeps the best k of them. A user without
candidates gets the popularity ranking, as the service answers a cold start. Each target's
rank is its position in the retriever's list (retrieval) or in the final list (pipeline);
a target absent from a list is UNRANKED, a miss.
"""

import time
from dataclasses import dataclass

import numpy as np

from recstack.eval_set import EvalSet
from recstack.ranking_metrics import RANK_MEMORY_ELEMENTS, UNRANKED
from recstack.schema import PAD_IDX
from recstack.serving.full_ranking import Rankings
from recstack.serving.ranking import Ranker, RankRequest
from recstack.serving.retrieval import RetrievalRequest, Retriever

BATCH_USERS = 256  # requests per retrieve / rank call, fewer where the catalogue is large


@dataclass
class UserRequest:
    """One evaluated user as the service sees them."""

    history: list[str]  # item ids, oldest first, at most history_limit
    context: dict  # e.g. {"ts": ..., "device": ...} of the first target event
    user_id: str


@dataclass
class PipelineRankings:
    retrieval: np.ndarray  # [T] each target's position in the retriever's top N, 1-based
    pipeline: Rankings  # each target's position in the final top k, and the lists
    n_popular: int  # users answered by the popularity ranking (no candidates)


def _positions(lists: list[list[str]], eval_set: EvalSet, item_ids: list[str]) -> np.ndarray:
    """[T] 1-based position of each target in its user's list, UNRANKED where absent."""
    ranks = np.full(eval_set.target_items.shape[0], UNRANKED, dtype=np.int64)
    for row, listed in enumerate(lists):
        where = {item: pos for pos, item in enumerate(listed, start=1)}
        t0 = eval_set.target_indptr[row]
        for offset, item in enumerate(eval_set.targets(row)):
            ranks[t0 + offset] = where.get(item_ids[item], UNRANKED)
    return ranks


def run_pipeline(
    retriever: Retriever,
    ranker: Ranker,
    eval_set: EvalSet,
    requests: list[UserRequest],
    retrieve_n: int,
    k: int,
    item_ids: list[str] | None = None,
) -> PipelineRankings:
    """Every user of `eval_set` (requests aligned with its users) through retrieve -> rank.

    item_ids: the eval set's ids by item_idx when its catalogue extends the artifacts' (an old
    model judged on a newer dataset version); default the ranker's catalogue."""
    catalog = ranker.artifact.catalog
    item_ids = catalog.item_ids if item_ids is None else item_ids
    retrieved: list[list[str]] = []
    final: list[list[str]] = []
    n_popular = 0
    # exact search holds users x catalogue scores per call: bound them like the full ranking
    users = min(BATCH_USERS, max(1, RANK_MEMORY_ELEMENTS // (eval_set.n_items + 1)))
    for start in range(0, len(requests), users):
        batch = requests[start : start + users]
        candidates = retriever.retrieve(
            [RetrievalRequest(r.history, r.context, r.user_id, [], retrieve_n) for r in batch]
        )
        retrieved += [c.item_ids for c in candidates]
        personal = [row for row, c in enumerate(candidates) if c.item_ids]
        ranked = (
            ranker.rank(
                [RankRequest(batch[row].history, candidates[row].item_ids, k) for row in personal]
            )
            if personal
            else []
        )
        lists = dict(zip(personal, (r.item_ids for r in ranked), strict=True))
        for row, request in enumerate(batch):
            if row not in lists:
                n_popular += 1
                lists[row] = ranker.popular(k, request.history).item_ids
            final.append(lists[row])
    top = np.full((len(final), k), PAD_IDX, dtype=np.int64)
    for row, listed in enumerate(final):
        top[row, : len(listed)] = [catalog.index[item] for item in listed]
    return PipelineRankings(
        retrieval=_positions(retrieved, eval_set, item_ids),
        pipeline=Rankings(ranks=_positions(final, eval_set, item_ids), top=top),
        n_popular=n_popular,
    )


def request_latency(
    retriever: Retriever, ranker: Ranker, requests: list[UserRequest], retrieve_n: int, k: int
) -> dict:
    """Milliseconds per request, one request at a time as a replica answers an unbatched call:
    retrieve `retrieve_n` then rank the best k (p50, p99, max over `requests`)."""
    seconds = []
    for request in requests:
        tick = time.perf_counter()
        found = retriever.retrieve(
            [RetrievalRequest(request.history, request.context, request.user_id, [], retrieve_n)]
        )[0]
        if found.item_ids:
            ranker.rank([RankRequest(request.history, found.item_ids, k)])
        seconds.append(time.perf_counter() - tick)
    ms = np.asarray(seconds) * 1e3
    return {
        "requests": len(seconds),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }
