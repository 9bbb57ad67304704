"""Synthetic interaction logs with planted, documented structure (`recstack data synth`).

The generator writes a raw log that `recstack data prepare --source synth:DIR` reads, at any
size (20M events in a few hundred MB of memory), so that every stage can be tested and
benchmarked on data whose signal is known. What a good model has to find:

1. **Popularity.** Item `i` has weight `w_i = rank_i ** -zipf_a` (Zipf); ranks are a random
   permutation of the item ids, so id order carries no signal. Fresh draws (below) follow these
   weights within a cluster; sequential steps flatten the realised popularity a little
   (`stats.top10_item_share` in synth.json is the realised head).
2. **Clusters (user-item affinity).** Every item belongs to one of `clusters` clusters (its
   `genres` in items.parquet; each cluster also has its own era of release `year`s). Every
   user prefers one cluster (40%) or two (60%, with a primary weight in 0.5-0.8), chosen in
   proportion to cluster popularity mass. A fresh draw takes a cluster from the user's
   preference (85%) or, exploring (15%), from all clusters by popularity mass, then an item
   inside that cluster by popularity (cumulative weights + searchsorted).
3. **Sequences (item-to-next-item Markov chain).** Every item has `3` fixed successor items
   (80% in its own cluster, 20% anywhere; drawn by popularity ** 0.5, never the item itself),
   taken with probabilities 0.6 / 0.25 / 0.15. Each event after a user's first is, with
   probability `p_sequential`, a successor of the user's previous event (by time); otherwise
   a fresh draw. The previous item therefore predicts the next one far better than popularity
   does: a first-order Markov baseline beats most-popular by a wide margin (the tests measure
   it), and sequence models (SASRec) should beat both.
4. **Context.** Hour of day (UTC, from `ts`) and `device` (mobile / desktop / tv) change which
   cluster a fresh draw comes from: each cluster has a peak daypart (night 0-5 h, morning 6-11,
   afternoon 12-17, evening 18-23; weight x4 there) and a home device (weight x3 on it). So
   cluster mixes differ measurably between night and day and between tv and mobile; a model
   given hour/device context can use it. Sequential steps ignore context.
5. **Users and time.** Events per user are heavy-tailed: `min(5, events // users)` each plus a
   lognormal (sigma 1) share of the rest, rounded by largest remainder so the total is exactly
   `events`. Each user has an activity window inside 2024 (14-365 days); events come in
   sessions (a new session with probability 1/6 per event) on one device (the user's
   `preferred_device` 75% of the time); a session starts at an hour drawn from the user's
   `segment` profile (early_bird / daytime / night_owl); gaps inside a session are about a
   minute or two (lognormal, median 90 s), gaps between sessions hours to weeks. Timestamps are
   strictly increasing per user (no ties), so "the previous event" is unambiguous.

Repeats: full-ranking evaluation masks items a user already had, so a repeated target can never
be hit. By default an event that would repeat one of the user's items is redrawn (a sequential
one takes the next successor slot, and becomes a fresh draw once all are seen; up to 6 rounds).
Users with more events than their clusters have items still repeat some; synth.json reports the
realised `stats.repeat_fraction` and `stats.sequential_fraction` (a little below `p_sequential`
for that reason). `allow_repeats=True` keeps repeats, as in streaming logs.

Measured (seed 0, HR@10 on each user's last event, no masking): 2k users / 500 items / 60k
events: Markov 0.57 vs most-popular 0.22; 138k / 27k / 20M: Markov 0.52 vs most-popular 0.09.

Output (one directory, written to `<out>.tmp-<random>` and renamed into place):

    events/part-00000.parquet ...  user_id Int64, item_id Int64, ts Int64 (s, UTC), device String
                                   rows shuffled within a part (like a real log); one part per
                                   chunk of users, each user entirely in one part
    items.parquet                  item_id Int64, title String, genres list[str], year Int16
    users.parquet                  user_id Int64, segment String, preferred_device String
    synth.json                     parameters, seed, counts, planted structure, realised stats

The same arguments (seed and chunking included) give byte-identical Parquet data.
"""

import itertools
import json
import os
import secrets
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from recstack.datasets.sources.synth_log import EVENTS_DIR
from recstack.errors import DataError
from recstack.progress import console
from recstack.schema import DEVICE, GENRES, ITEM_ID, TITLE, TS, USER_ID, YEAR

# columns this generator adds beyond recstack.schema
SEGMENT = "segment"
PREFERRED_DEVICE = "preferred_device"

SUMMARY_FILE = "synth.json"
SYNTH_FORMAT_VERSION = 1

DEVICES = ("mobile", "desktop", "tv")
DEVICE_SHARE = (0.55, 0.30, 0.15)  # preferred-device mix over users
SEGMENTS = ("early_bird", "daytime", "night_owl")
SEGMENT_SHARE = (0.25, 0.50, 0.25)
DAYPARTS = ("night", "morning", "afternoon", "evening")  # hours 0-5, 6-11, 12-17, 18-23

WINDOW_START = 1_704_067_200  # 2024-01-01T00:00:00Z
WINDOW_DAYS = 366  # 2024 is a leap year; sessions start on days 0..364, so they end in 2024
DAY = 86_400

MIN_EVENTS_PER_USER = 5
ACTIVITY_SIGMA = 1.0  # lognormal sigma of per-user activity
SECOND_CLUSTER_PROB = 0.6
EXPLORE_PROB = 0.15
N_SUCCESSORS = 3
SUCCESSOR_PROBS = (0.6, 0.25, 0.15)
SUCCESSOR_SAME_CLUSTER = 0.8
SUCCESSOR_POP_POWER = 0.5
DAYPART_BOOST = 4.0
DEVICE_BOOST = 3.0
REPEAT_ROUNDS = 6  # redraws of events that repeat an item of the same user
SESSION_MEAN_EVENTS = 6.0
GAP_MEDIAN_S = 90.0
GAP_SIGMA = 0.8
SESSION_PREFERRED_DEVICE = 0.75
TARGET_EVENTS_PER_PART = 1_000_000  # default chunking


@dataclass
class _World:
    """Everything fixed before events are drawn (items, users, context tables)."""

    n_items: int
    n_clusters: int
    item_cluster: np.ndarray  # (I,) int64 cluster of each item index
    pop_weight: np.ndarray  # (I,) float64 Zipf weight
    cl_items: np.ndarray  # (I,) item indices sorted by cluster
    cl_cum: np.ndarray  # (I,) cluster c's items have cumulative weights in (c, c + 1]
    explore_cum: np.ndarray  # (4 * 3 * C,) per (daypart, device) combo k: values in (k, k + 1]
    affinity: np.ndarray  # (C, 4, 3) daypart x device multiplier of each cluster
    successors: np.ndarray  # (I, N_SUCCESSORS) int64 item indices
    user_c1: np.ndarray  # (U,) primary cluster
    user_c2: np.ndarray  # (U,) second cluster, -1 for none
    user_w1: np.ndarray  # (U,) weight of the primary cluster
    user_segment: np.ndarray  # (U,) index into SEGMENTS
    user_device: np.ndarray  # (U,) index into DEVICES
    user_events: np.ndarray  # (U,) events per user, sums to `events`
    hour_cum: np.ndarray  # (len(SEGMENTS) * 24,) segment s: values in (s, s + 1]
    cluster_daypart: np.ndarray  # (C,) peak daypart of each cluster
    cluster_device: np.ndarray  # (C,) home device of each cluster
    item_year: np.ndarray  # (I,) int16 release year: the cluster's era +- a few years


def synthesize(
    out: Path,
    users: int,
    items: int,
    events: int,
    seed: int = 0,
    clusters: int = 20,
    zipf_a: float = 1.1,
    p_sequential: float = 0.5,
    allow_repeats: bool = False,
    chunk_users: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Generate a synthetic interaction log with planted popularity, cluster, sequence, context.

    Writes `out/events/part-*.parquet` (user_id, item_id, ts, device), `out/items.parquet`,
    `out/users.parquet` and `out/synth.json` (what was planted, and realised statistics); read
    it with `recstack data prepare --source synth:OUT`. Memory stays bounded by one chunk of
    users, so 20M+ events are fine. Same arguments, same bytes.

    Args:
        out: directory to write (created via a temporary sibling, then renamed into place).
        users: number of users (ids 1..users).
        items: number of items (ids 1..items).
        events: total number of events, exactly; at least `users`.
        seed: random seed.
        clusters: number of latent item clusters (genres); at most `items`.
        zipf_a: Zipf exponent of item popularity (weight = rank ** -zipf_a).
        p_sequential: probability that an event is a planted successor of the user's previous item.
        allow_repeats: keep events that repeat an item the user already had (streaming-like);
            by default such events are redrawn (up to 6 rounds) so that few remain.
        chunk_users: users per part file (bounds memory). Default: about 1M events per part.
        progress: show a progress bar on stderr.
        overwrite: replace an existing non-empty `out`.

    Returns:
        The summary also written to `out/synth.json`.
    """
    out = Path(out)
    _validate(out, users, items, events, clusters, zipf_a, p_sequential, chunk_users, overwrite)
    started = time.perf_counter()
    root = np.random.SeedSequence(seed)
    world_seq, chunk_seq = root.spawn(2)
    world = _build_world(np.random.default_rng(world_seq), users, items, events, clusters, zipf_a)
    bounds = _chunk_bounds(world.user_events, chunk_users)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        (tmp / EVENTS_DIR).mkdir()
        stats = _write_events(
            tmp / EVENTS_DIR,
            world,
            bounds,
            chunk_seq,
            (p_sequential, allow_repeats),
            events,
            progress,
        )
        _items_frame(world).write_parquet(tmp / "items.parquet", compression="zstd")
        _users_frame(world).write_parquet(tmp / "users.parquet", compression="zstd")
        summary = _summary(
            world,
            stats,
            bounds,
            dict(
                users=users,
                items=items,
                events=events,
                seed=seed,
                clusters=clusters,
                zipf_a=zipf_a,
                p_sequential=p_sequential,
                allow_repeats=allow_repeats,
                chunk_users=chunk_users,
            ),
            seconds=time.perf_counter() - started,
        )
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


# --------------------------------------------------------------------------- arguments, files


def _validate(out, users, items, events, clusters, zipf_a, p_sequential, chunk_users, overwrite):
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise DataError(f"synth: {message}")

    for name, value in (("users", users), ("items", items), ("events", events)):
        need(isinstance(value, int | np.integer) and value > 0, f"{name} must be > 0, got {value}")
    need(events >= users, f"events ({events}) must be >= users ({users}): every user needs one")
    need(clusters >= 1, f"clusters must be >= 1, got {clusters}")
    need(items >= clusters, f"items ({items}) must be >= clusters ({clusters})")
    need(items >= 2, f"items must be >= 2 (successors need another item), got {items}")
    need(zipf_a >= 0 and np.isfinite(zipf_a), f"zipf_a must be finite and >= 0, got {zipf_a}")
    need(0.0 <= p_sequential <= 1.0, f"p_sequential must be in [0, 1], got {p_sequential}")
    need(chunk_users is None or chunk_users > 0, f"chunk_users must be > 0, got {chunk_users}")
    need(users < 2**31 and items < 2**31, "users and items must be < 2**31")
    if out.exists():
        need(out.is_dir(), f"{out} exists and is not a directory; choose another --out")
        need(
            overwrite or not any(out.iterdir()),
            f"{out} exists and is not empty; pass --overwrite true or choose another --out",
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` (empty, or overwrite) is replaced."""
    if out.exists():
        old = out.parent / f"{out.name}.old-{secrets.token_hex(4)}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _chunk_bounds(user_events: np.ndarray, chunk_users: int | None) -> list[tuple[int, int]]:
    """[start, stop) user-index ranges, one per part file."""
    n_users = len(user_events)
    if chunk_users is not None:
        starts = np.arange(0, n_users, chunk_users)
        return [(int(s), int(min(s + chunk_users, n_users))) for s in starts]
    cum = np.cumsum(user_events)
    cuts = np.searchsorted(
        cum, np.arange(1, cum[-1] // TARGET_EVENTS_PER_PART + 1) * TARGET_EVENTS_PER_PART
    )
    edges = np.unique(np.concatenate([[0], np.minimum(cuts + 1, n_users), [n_users]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- the world


def _segment_cum(probs: np.ndarray) -> np.ndarray:
    """Rows of probabilities (k, n) -> one flat cumulative array with row k in (k, k + 1].

    `np.searchsorted(cum, k + u, side="right") - k * n` then samples row k for u in [0, 1).
    """
    probs = probs / probs.sum(axis=1, keepdims=True)
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    return (cum + np.arange(len(probs))[:, None]).ravel()


def _sample_rows(cum: np.ndarray, row: np.ndarray, width: int, u: np.ndarray) -> np.ndarray:
    """Column index sampled from row `row` of a `_segment_cum` table (vectorised)."""
    idx = np.searchsorted(cum, row + u * (1.0 - 1e-12), side="right") - row * width
    return np.minimum(idx, width - 1)


def _cluster_cum(item_cluster: np.ndarray, weight: np.ndarray, n_clusters: int):
    """Items sorted by cluster and their within-cluster cumulative weights offset by cluster."""
    order = np.argsort(item_cluster, kind="stable")
    cl = item_cluster[order]
    w = weight[order]
    cs = np.cumsum(w)
    start = np.searchsorted(cl, np.arange(n_clusters), side="left")
    stop = np.searchsorted(cl, np.arange(n_clusters), side="right")
    before = np.where(start > 0, cs[np.maximum(start - 1, 0)], 0.0)
    total = cs[stop - 1] - before
    cum = (cs - before[cl]) / total[cl] + cl
    cum[stop - 1] = np.arange(n_clusters) + 1.0
    return order, cum


def _sample_in_cluster(cl_items, cl_cum, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(cl_cum, cluster + u * (1.0 - 1e-12), side="right")
    return cl_items[np.minimum(idx, len(cl_items) - 1)]


def _hour_profiles() -> np.ndarray:
    """(len(SEGMENTS), 24) session-start hour weights: mixtures of von Mises bumps."""
    hours = np.arange(24)

    def bumps(*peaks: tuple[float, float]) -> np.ndarray:
        w = np.full(24, 0.03)
        for centre, height in peaks:
            w += height * np.exp(2.5 * (np.cos(2 * np.pi * (hours - centre) / 24) - 1))
        return w

    return np.stack(
        [
            bumps((7.5, 1.0), (18.5, 0.7)),  # early_bird
            bumps((12.5, 0.8), (20.0, 1.0)),  # daytime
            bumps((23.0, 1.0), (2.0, 0.6)),  # night_owl
        ]
    )


def _user_events(rng: np.random.Generator, users: int, events: int) -> np.ndarray:
    """Heavy-tailed events per user summing to `events` exactly (largest remainder)."""
    base = min(MIN_EVENTS_PER_USER, events // users)
    extra = events - base * users
    w = rng.lognormal(0.0, ACTIVITY_SIGMA, users)
    raw = w / w.sum() * extra
    counts = np.floor(raw).astype(np.int64)
    left = extra - int(counts.sum())
    if left > 0:
        counts[np.argpartition(counts - raw, left - 1)[:left]] += 1
    return counts + base


def _build_world(rng, users: int, items: int, events: int, clusters: int, zipf_a: float):
    n_dev, n_dp = len(DEVICES), len(DAYPARTS)
    rank = rng.permutation(items)
    pop = (rank + 1.0) ** -zipf_a

    share = rng.dirichlet(np.full(clusters, 5.0))
    item_cluster = np.concatenate(
        [np.arange(clusters), rng.choice(clusters, items - clusters, p=share)]
    )
    item_cluster = rng.permutation(item_cluster).astype(np.int64)
    cl_items, cl_cum = _cluster_cum(item_cluster, pop, clusters)
    mass = np.bincount(item_cluster, weights=pop, minlength=clusters)
    mass = mass / mass.sum()

    # context: each cluster peaks in one daypart and on one device
    cluster_daypart = rng.permutation(np.arange(clusters) % n_dp)
    cluster_device = rng.permutation(np.arange(clusters) % n_dev)
    dp_aff = np.where(np.arange(n_dp)[None, :] == cluster_daypart[:, None], DAYPART_BOOST, 1.0)
    dev_aff = np.where(np.arange(n_dev)[None, :] == cluster_device[:, None], DEVICE_BOOST, 1.0)
    affinity = dp_aff[:, :, None] * dev_aff[:, None, :]  # (C, 4, 3)
    explore = mass[None, :] * affinity.reshape(clusters, n_dp * n_dev).T  # (12, C)
    explore_cum = _segment_cum(explore)

    # successors: mostly in the item's own cluster, by softened popularity, never the item
    soft = pop**SUCCESSOR_POP_POWER
    s_items, s_cum = _cluster_cum(item_cluster, soft, clusters)
    soft_mass = np.bincount(item_cluster, weights=soft, minlength=clusters)
    soft_mass_cum = _segment_cum(soft_mass[None, :])
    own = np.repeat(np.arange(items), N_SUCCESSORS).reshape(items, N_SUCCESSORS)
    succ = np.full((items, N_SUCCESSORS), -1, dtype=np.int64)
    for _ in range(8):
        bad = (succ < 0) | (succ == own)
        bad[:, 1:] |= succ[:, 1:] == succ[:, :1]
        bad[:, 2:] |= succ[:, 2:] == succ[:, 1:2]
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        same = rng.random(n_bad) < SUCCESSOR_SAME_CLUSTER
        cluster = np.where(
            same,
            item_cluster[own[bad]],
            _sample_rows(soft_mass_cum, np.zeros(n_bad, np.int64), clusters, rng.random(n_bad)),
        )
        succ[bad] = _sample_in_cluster(s_items, s_cum, cluster, rng.random(n_bad))
    still = (succ < 0) | (succ == own)  # singleton clusters: any other item
    succ[still] = (own[still] + rng.integers(1, items, int(still.sum()))) % items

    c1 = _sample_rows(
        _segment_cum(mass[None, :]), np.zeros(users, np.int64), clusters, rng.random(users)
    )
    c2 = _sample_rows(
        _segment_cum(mass[None, :]), np.zeros(users, np.int64), clusters, rng.random(users)
    )
    has_two = (rng.random(users) < SECOND_CLUSTER_PROB) & (c2 != c1) & (clusters > 1)
    c2 = np.where(has_two, c2, -1)

    return _World(
        n_items=items,
        n_clusters=clusters,
        item_cluster=item_cluster,
        pop_weight=pop,
        cl_items=cl_items,
        cl_cum=cl_cum,
        explore_cum=explore_cum,
        affinity=affinity,
        successors=succ,
        user_c1=c1.astype(np.int64),
        user_c2=c2.astype(np.int64),
        user_w1=rng.uniform(0.5, 0.8, users),
        user_segment=rng.choice(len(SEGMENTS), users, p=SEGMENT_SHARE),
        user_device=rng.choice(n_dev, users, p=DEVICE_SHARE),
        user_events=_user_events(rng, users, events),
        hour_cum=_segment_cum(_hour_profiles()),
        cluster_daypart=cluster_daypart,
        cluster_device=cluster_device,
        item_year=np.clip(
            rng.integers(1960, 2021, clusters)[item_cluster] + np.round(rng.normal(0, 5, items)),
            1950,
            2024,
        ).astype(np.int16),
    )


def _genre_names(n_clusters: int) -> list[str]:
    width = len(str(n_clusters))
    return [f"genre-{c + 1:0{width}d}" for c in range(n_clusters)]


def _items_frame(world: _World) -> pl.DataFrame:
    genre = pl.Series(GENRES, _genre_names(world.n_clusters))[world.item_cluster]
    frame = pl.DataFrame(
        {
            ITEM_ID: np.arange(1, world.n_items + 1, dtype=np.int64),
            GENRES: genre,
            YEAR: world.item_year,
        }
    )
    return frame.select(
        ITEM_ID,
        pl.format("Synthetic item {} ({})", ITEM_ID, GENRES).alias(TITLE),
        pl.concat_list(GENRES).alias(GENRES),
        YEAR,
    )


def _users_frame(world: _World) -> pl.DataFrame:
    n = len(world.user_events)
    return pl.DataFrame(
        {
            USER_ID: np.arange(1, n + 1, dtype=np.int64),
            SEGMENT: np.array(SEGMENTS)[world.user_segment],
            PREFERRED_DEVICE: np.array(DEVICES)[world.user_device],
        }
    )


# --------------------------------------------------------------------------- events


def _segmented_cummax(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running max of `values` restarting at each new `group` (groups contiguous, ascending).

    `values` must lie in [-2**31, 2**31): each group gets an offset of 2**32 above the last.
    """
    offset = (group - group[0]).astype(np.int64) << 32
    return np.maximum.accumulate(values + offset) - offset


def _chunk_events(rng, world: _World, lo, hi, p_sequential: float, allow_repeats: bool) -> dict:
    """Events of users [lo, hi): arrays in (user, time) order, plus realised counts."""
    counts = world.user_events[lo:hi]
    n_users = hi - lo
    n = int(counts.sum())
    user = np.repeat(np.arange(lo, hi, dtype=np.int64), counts)  # (n,) user index
    first = np.zeros(n, dtype=bool)
    first[np.cumsum(counts) - counts] = True

    # --- sessions and timestamps
    new_session = first | (rng.random(n) < 1.0 / SESSION_MEAN_EVENTS)
    session = np.cumsum(new_session) - 1  # (n,) session index in the chunk
    s_first = np.flatnonzero(new_session)  # (S,) first event of each session
    s_user = user[s_first]
    n_sessions = len(s_first)
    span = rng.uniform(14, WINDOW_DAYS - 1, n_users)  # activity window (days) of each user
    window_start = rng.uniform(0, WINDOW_DAYS - 1 - span)
    day = np.floor(window_start[s_user - lo] + rng.random(n_sessions) * span[s_user - lo]).astype(
        np.int64
    )
    hour = _sample_rows(world.hour_cum, world.user_segment[s_user], 24, rng.random(n_sessions))
    start = day * DAY + hour * 3600 + rng.integers(0, 3600, n_sessions)
    start = np.sort(((s_user - lo) << 26) | start) & ((1 << 26) - 1)  # sorted within each user
    s_device = np.where(
        rng.random(n_sessions) < SESSION_PREFERRED_DEVICE,
        world.user_device[s_user],
        rng.choice(len(DEVICES), n_sessions, p=DEVICE_SHARE),
    )

    gap = np.where(new_session, 0.0, rng.lognormal(np.log(GAP_MEDIAN_S), GAP_SIGMA, n))
    cum_gap = np.cumsum(gap)
    offset = cum_gap - cum_gap[s_first][session]  # seconds since the session's first event
    duration = offset[np.r_[s_first[1:], n] - 1]
    same_user_next = np.r_[s_user[1:] == s_user[:-1], False]
    room = np.where(same_user_next, np.r_[start[1:] - start[:-1], 0], np.inf)
    squeeze = np.minimum(1.0, 0.8 * room / np.maximum(duration, 1.0))  # sessions never overlap
    rel = start[session] + np.round(offset * squeeze[session]).astype(np.int64)
    idx = np.arange(n, dtype=np.int64)
    rel = _segmented_cummax(rel - idx, user) + idx  # strictly increasing per user
    ts = WINDOW_START + rel
    device = s_device[session]
    daypart = (rel // 3600 % 24) // 6

    # --- items: fresh draws under context, then planted chains; then replace repeats
    item = _fresh_items(rng, world, user, daypart, device)
    sequential = (rng.random(n) < p_sequential) & ~first
    slot = np.searchsorted(np.cumsum(SUCCESSOR_PROBS)[:-1], rng.random(n), side="right")
    _follow_successors(world, item, sequential, slot)
    tried = np.zeros(n, dtype=np.int8)  # successor slots tried beyond the first
    for _ in range(0 if allow_repeats else REPEAT_ROUNDS):
        again = _repeated(user - lo, item, world.n_items)
        if len(again) == 0:
            break
        # a sequential repeat takes the next successor slot; once all are tried, a fresh draw
        seq = again[sequential[again]]
        tried[seq] += 1
        slot[seq] = (slot[seq] + 1) % N_SUCCESSORS
        sequential[seq[tried[seq] >= N_SUCCESSORS]] = False
        fresh = again[~sequential[again]]
        item[fresh] = _fresh_items(rng, world, user[fresh], daypart[fresh], device[fresh])
        _follow_successors(world, item, sequential, slot)

    return dict(
        user=user,
        item=item,
        ts=ts,
        device=device,
        n_sequential=int(sequential.sum()),
        n_repeats=len(_repeated(user - lo, item, world.n_items)),
        n_sessions=n_sessions,
        item_counts=np.bincount(item, minlength=world.n_items),
        ts_min=int(ts.min()),
        ts_max=int(ts.max()),
    )


def _fresh_items(rng, world: _World, user, daypart, device) -> np.ndarray:
    """A fresh draw per event: a cluster from the user's preference (or exploring), weighted by
    the cluster's daypart x device affinity, then an item in that cluster by popularity."""
    n = len(user)
    c1, c2 = world.user_c1[user], world.user_c2[user]
    a1 = world.user_w1[user] * world.affinity[c1, daypart, device]
    a2 = np.where(c2 >= 0, (1 - world.user_w1[user]) * world.affinity[c2, daypart, device], 0.0)
    cluster = np.where(rng.random(n) * (a1 + a2) < a2, c2, c1)
    explore = rng.random(n) < EXPLORE_PROB
    combo = daypart[explore] * len(DEVICES) + device[explore]
    cluster[explore] = _sample_rows(
        world.explore_cum, combo, world.n_clusters, rng.random(int(explore.sum()))
    )
    return _sample_in_cluster(world.cl_items, world.cl_cum, cluster, rng.random(n))


def _follow_successors(world: _World, item, sequential, slot) -> None:
    """In place: every sequential event becomes successor `slot` of the event before it.

    Events are in (user, time) order and a user's first event is never sequential, so chains
    are resolved by depth (1 step after a fresh draw, then 2, ...): ~log(n) vectorised steps.
    """
    idx = np.arange(len(item))
    depth = idx - np.maximum.accumulate(np.where(sequential, 0, idx))
    if depth.max() < 2**16:
        depth = depth.astype(np.uint16)  # stable argsort of 16-bit ints is a radix sort
    by_depth = np.argsort(depth, kind="stable")
    edges = np.searchsorted(depth[by_depth], np.arange(1, int(depth.max()) + 2))
    for k in range(1, int(depth.max()) + 1):
        pos = by_depth[edges[k - 1] : edges[k]]
        item[pos] = world.successors[item[pos - 1], slot[pos]]


def _repeated(user_local: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Positions (in (user, time) order) whose item the same user already had earlier."""
    n = len(item)
    key = user_local * n_items + item
    if (int(user_local[-1]) + 1) * n_items * n < 2**62:  # pack (key, position): one plain sort
        packed = np.sort(key * n + np.arange(n))
        sorted_key, order = np.divmod(packed, n)
    else:
        order = np.argsort(key, kind="stable")  # stable: earlier events first among equal keys
        sorted_key = key[order]
    return np.sort(order[1:][sorted_key[1:] == sorted_key[:-1]])


def _events_table(rng, chunk: dict) -> pa.Table:
    order = rng.permutation(len(chunk["user"]))  # a real log is not sorted
    device = pa.DictionaryArray.from_arrays(
        pa.array(chunk["device"][order].astype(np.int8)), pa.array(DEVICES)
    ).cast(pa.string())
    return pa.table(
        {
            USER_ID: pa.array(chunk["user"][order] + 1),
            ITEM_ID: pa.array(chunk["item"][order] + 1),
            TS: pa.array(chunk["ts"][order]),
            DEVICE: device,
        }
    )


def _write_part(rng, chunk: dict, path: Path) -> int:
    table = _events_table(rng, chunk)
    pq.write_table(table, path, compression="zstd")
    return table.num_rows


def _write_events(folder, world, bounds, chunk_seq, how, events, progress) -> dict:
    """Generate and write one part per chunk; writing overlaps the next chunk's generation
    (one writer thread, at most one chunk waiting), so memory stays at about two chunks."""
    stats = dict(
        n_sequential=0,
        n_repeats=0,
        n_sessions=0,
        item_counts=np.zeros(world.n_items, np.int64),
        ts_min=WINDOW_START + WINDOW_DAYS * DAY,
        ts_max=WINDOW_START,
        part_rows=[],
    )
    bar = Progress(
        "synth events",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    pending: Future | None = None
    with bar, ThreadPoolExecutor(max_workers=1) as writer:
        task = bar.add_task("events", total=events)
        seqs = chunk_seq.spawn(len(bounds))
        for part, ((lo, hi), seq) in enumerate(zip(bounds, seqs, strict=True)):
            rng = np.random.default_rng(seq)
            chunk = _chunk_events(rng, world, lo, hi, *how)
            for key in ("n_sequential", "n_repeats", "n_sessions"):
                stats[key] += chunk[key]
            stats["item_counts"] += chunk["item_counts"]
            stats["ts_min"] = min(stats["ts_min"], chunk["ts_min"])
            stats["ts_max"] = max(stats["ts_max"], chunk["ts_max"])
            if pending is not None:
                stats["part_rows"].append(pending.result())
                bar.advance(task, stats["part_rows"][-1])
            pending = writer.submit(_write_part, rng, chunk, folder / f"part-{part:05d}.parquet")
            del chunk
        if pending is not None:
            stats["part_rows"].append(pending.result())
            bar.advance(task, stats["part_rows"][-1])
    return stats


# --------------------------------------------------------------------------- summary


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _summary(world: _World, stats: dict, bounds, params: dict, seconds: float) -> dict:
    n_events = int(sum(stats["part_rows"]))
    counts = world.user_events
    item_counts = np.sort(stats["item_counts"])[::-1]
    names = _genre_names(world.n_clusters)
    return {
        "generator": "recstack.datasets.synth",
        "format_version": SYNTH_FORMAT_VERSION,
        "params": params,
        "counts": {
            "users": len(counts),
            "items": world.n_items,
            "events": n_events,
            "sessions": stats["n_sessions"],
            "parts": len(bounds),
        },
        "files": {
            "events": [f"{EVENTS_DIR}/part-{i:05d}.parquet" for i in range(len(bounds))],
            "part_rows": stats["part_rows"],
            "items": "items.parquet",
            "users": "users.parquet",
        },
        "columns": {
            "events": [USER_ID, ITEM_ID, TS, DEVICE],
            "items": [ITEM_ID, TITLE, GENRES, YEAR],
            "users": [USER_ID, SEGMENT, PREFERRED_DEVICE],
        },
        "time_window": {
            "start": _iso(WINDOW_START),
            "end": _iso(WINDOW_START + WINDOW_DAYS * DAY),
            "first_ts": stats["ts_min"],
            "last_ts": stats["ts_max"],
        },
        "planted": {
            "popularity": f"Zipf: weight rank ** -{params['zipf_a']}, ranks a random permutation",
            "clusters": {
                "n": world.n_clusters,
                "items_per_cluster": np.bincount(
                    world.item_cluster, minlength=world.n_clusters
                ).tolist(),
                "user_second_cluster_prob": SECOND_CLUSTER_PROB,
                "users_with_two_clusters": int((world.user_c2 >= 0).sum()),
                "explore_prob": EXPLORE_PROB,
            },
            "sequences": {
                "p_sequential": params["p_sequential"],
                "successors_per_item": N_SUCCESSORS,
                "successor_probs": list(SUCCESSOR_PROBS),
                "successor_same_cluster": SUCCESSOR_SAME_CLUSTER,
                "successor_popularity_power": SUCCESSOR_POP_POWER,
            },
            "context": {
                "dayparts": {
                    "night": "0-5",
                    "morning": "6-11",
                    "afternoon": "12-17",
                    "evening": "18-23",
                },
                "daypart_boost": DAYPART_BOOST,
                "device_boost": DEVICE_BOOST,
                "cluster_peak_daypart": {
                    n: DAYPARTS[d] for n, d in zip(names, world.cluster_daypart, strict=True)
                },
                "cluster_home_device": {
                    n: DEVICES[d] for n, d in zip(names, world.cluster_device, strict=True)
                },
            },
            "users": {
                "min_events": int(counts.min()),
                "activity": f"lognormal sigma {ACTIVITY_SIGMA}, total exact",
                "session_mean_events": SESSION_MEAN_EVENTS,
                "gap_median_s": GAP_MEDIAN_S,
                "session_preferred_device": SESSION_PREFERRED_DEVICE,
                "segments": list(SEGMENTS),
            },
        },
        "stats": {
            "events_per_user": {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "mean": round(float(counts.mean()), 3),
                "max": int(counts.max()),
            },
            "sequential_fraction": round(stats["n_sequential"] / n_events, 4),
            "repeat_fraction": round(stats["n_repeats"] / n_events, 4),
            "top10_item_share": round(float(item_counts[:10].sum() / n_events), 4),
            "items_never_used": int((item_counts == 0).sum()),
            "seconds": round(seconds, 2),
        },
    }
