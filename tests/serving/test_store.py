"""The online-store contract, run against both backends: EmbeddedStore and a real Redis."""

import asyncio
import multiprocessing
import re
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from service_config import free_port
from tiny_data import prepared_log

from recstack.errors import RecstackError
from recstack.serving.store import open_store
from recstack.serving.store.base import StoreUnavailable
from recstack.serving.store.embedded import EmbeddedStore, user_key
from recstack.serving.store.redis_store import RedisStore
from recstack.serving.store.seed import seed_from_dataset

ERASE_ME = "user-erase-me-7"


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.integration)])
def make_store(request, tmp_path):
    """A factory of stores of one backend (several handles share the same state)."""
    opened = []
    if request.param == "embedded":
        spec = {"kind": "embedded", "path": str(tmp_path / "state.sqlite")}
    else:  # a fresh key prefix per test: tests never see each other's keys
        spec = {"kind": "redis", "url": request.getfixturevalue("redis_url")}
        spec["prefix"] = f"t{uuid.uuid4().hex[:8]}:"

    def make(**options):
        opened.append(open_store({**spec, **options}))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


class ThroughCallAsync:
    """The same store, every method called through `call_async` on one event loop (the
    service's path), so the contract tests check both paths of each backend."""

    def __init__(self, store) -> None:
        self.wrapped, self.runner = store, asyncio.Runner()

    def __getattr__(self, name: str):
        attr = getattr(self.wrapped, name)
        if not callable(attr):
            return attr
        return lambda *args: self.runner.run(self.wrapped.call_async(name, *args))

    def close(self) -> None:
        self.runner.run(self.wrapped.aclose())
        self.runner.close()


@pytest.fixture(params=["blocking", "call_async"])
def store(request, make_store):
    store = make_store(max_history=5)
    if request.param == "blocking":
        yield store
        return
    wrapped = ThroughCallAsync(store)
    yield wrapped
    wrapped.close()


def dump(store) -> list[str]:
    """Every key and value the backend holds, as text (what an erasure must have cleared)."""
    store = getattr(store, "wrapped", store)
    if isinstance(store, EmbeddedStore):
        with sqlite3.connect(store.path) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            return [repr(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}")]
    client = redis.Redis.from_url(store.url, decode_responses=True)
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value = {"list": lambda k: client.lrange(k, 0, -1), "hash": client.hgetall}.get(
            kind, client.get
        )
        out.append(f"{key} = {value(key)!r}")
    client.close()
    return out


def test_history_order_and_trim(store):
    assert store.history("u1", 10) == [] and not store.known("u1")
    store.append_history("u1", ["a", "b"])
    store.append_history("u1", ["c"])
    store.append_history("u1", [])
    assert store.history("u1", 10) == ["a", "b", "c"] and store.known("u1")
    store.append_history("u1", ["d", "e", "f", "g"])
    assert store.history("u1", 10) == ["c", "d", "e", "f", "g"]  # last max_history=5
    assert store.history("u1", 2) == ["f", "g"]
    assert store.history("u1", 0) == []
    store.append_history("u1", [str(i) for i in range(12)])  # longer than max_history at once
    assert store.history("u1", 10) == ["7", "8", "9", "10", "11"]


def test_histories_in_one_call(store):
    store.extend_histories({"u1": ["a", "b"], "u2": ["x"], "u3": []})
    assert store.histories(["u2", "nobody", "u1"], 1) == [["x"], [], ["b"]]
    assert store.histories([], 3) == []
    store.set_histories({"u1": ["p", "q"], "u4": list("abcdefg")})
    assert store.histories(["u1", "u2", "u4"], 10) == [["p", "q"], ["x"], list("cdefg")]
    with pytest.raises(RecstackError, match="limit"):
        store.history("u1", -1)
    with pytest.raises(RecstackError, match="item ids are strings"):
        store.append_history("u1", [42])


def test_consent_onboarding_meta(store):
    assert store.consent("u1") is None
    store.set_consent("u1", {"personalization": True, "tracking": False})
    assert store.consent("u1") == {"personalization": True, "tracking": False}
    store.set_consent("u1", {})
    assert store.consent("u1") == {}  # set to nothing is not "never set"
    with pytest.raises(RecstackError, match="true/false"):
        store.set_consent("u1", {"tracking": "yes"})

    assert store.onboarding("u2") == []
    store.set_onboarding("u2", ["i1", "i2"])
    assert store.onboarding("u2") == ["i1", "i2"] and store.known("u2")
    store.set_onboarding("u2", ["i3"])
    assert store.onboarding("u2") == ["i3"]
    store.set_onboarding("u2", [])
    assert store.onboarding("u2") == []

    assert store.get_meta("model_version") is None
    store.set_meta("model_version", "sasrec-v1")
    store.set_meta("model_version", "sasrec-v2")
    assert store.get_meta("model_version") == "sasrec-v2"


def test_user_data_and_erase_completeness(store):
    store.append_history(ERASE_ME, ["i1", "i2"])
    store.set_consent(ERASE_ME, {"personalization": True})
    store.set_onboarding(ERASE_ME, ["i9"])
    store.append_history("other", ["i1"])
    assert store.user_data(ERASE_ME) == {
        "user_id": ERASE_ME,
        "history": ["i1", "i2"],
        "consent": {"personalization": True},
        "onboarding": ["i9"],
    }
    assert any(ERASE_ME in line or repr(user_key(ERASE_ME)) in line for line in dump(store))

    assert store.erase(ERASE_ME) is True
    assert store.erase(ERASE_ME) is False
    assert not store.known(ERASE_ME)
    assert store.user_data(ERASE_ME) == {
        "user_id": ERASE_ME,
        "history": [],
        "consent": None,
        "onboarding": [],
    }
    left = dump(store)
    assert left and not [x for x in left if ERASE_ME in x or repr(user_key(ERASE_ME)) in x]
    assert store.history("other", 5) == ["i1"]
    store = getattr(store, "wrapped", store)
    if isinstance(store, EmbeddedStore):  # not even a byte of the id or its row key on disk
        files = [p for p in store.path.parent.iterdir() if p.name.startswith(store.path.name)]
        for path in files:
            data = path.read_bytes()
            assert ERASE_ME.encode() not in data and user_key(ERASE_ME) not in data, path


@pytest.mark.integration
def test_redis_keys_live_under_the_user_prefix(redis_url):
    store = RedisStore(redis_url, prefix="layout:")
    store.append_history("42", ["1"])
    store.set_consent("42", {"tracking": True})
    store.set_onboarding("42", ["2"])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = sorted(client.scan_iter(match="layout:*"))
    client.close()
    store.close()
    assert keys == sorted(f"layout:user:42:{k}" for k in ("history", "consent", "onboarding"))


def test_embedded_store_locked_by_another_writer(tmp_path):
    store = EmbeddedStore(tmp_path / "state.sqlite", busy_timeout_s=0.2)
    blocker = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        assert store.history("u", 5) == []  # WAL: reads go on
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            store.append_history("u", ["a"])
        assert time.monotonic() - started < 2.0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.append_history("u", ["a"])
    assert store.history("u", 5) == ["a"]
    store.close()


def test_open_store_errors(tmp_path):
    with pytest.raises(RecstackError, match="store kind 'memcached' is not one of"):
        open_store({"kind": "memcached"})
    with pytest.raises(RecstackError, match="needs 'path'"):
        open_store({"kind": "embedded"})
    with pytest.raises(RecstackError, match="unknown field"):
        open_store({"kind": "redis", "url": "redis://x", "pathh": 1})
    with pytest.raises(RecstackError, match="bad Redis URL"):
        open_store({"kind": "redis", "url": "http://localhost"})
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(RecstackError, match="cannot open the embedded store"):
        open_store({"kind": "embedded", "path": str(tmp_path / "junk.sqlite")})


def _silent_server() -> tuple[socket.socket, int]:
    """A socket that accepts connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("target", ["refused", "silent"])
def test_unreachable_redis_fails_fast(target):
    silent = None
    if target == "silent":
        silent, port = _silent_server()
    else:
        port = free_port()
    store = RedisStore(f"redis://:secret@127.0.0.1:{port}/0")
    try:
        for call in (
            store.ping,
            lambda: store.history("u", 5),
            lambda: store.append_history("u", ["a"]),
            lambda: store.consent("u"),
        ):
            started = time.monotonic()
            with pytest.raises(
                StoreUnavailable, match=re.escape("Redis at redis://:***@127.0.0.1")
            ) as exc:
                call()
            assert time.monotonic() - started < 2.0
            assert "secret" not in str(exc.value)
    finally:
        store.close()
        if silent is not None:
            silent.close()


def _child(path: str, to_parent, from_parent) -> None:
    store = EmbeddedStore(Path(path), max_history=1000)
    store.append_history("child", ["c1"])
    to_parent.put("written")
    from_parent.get(timeout=20)
    to_parent.put(store.history("parent", 10))
    for i in range(200):  # concurrent appends to one user: none may be lost
        store.append_history("shared", [f"c{i}"])
    store.close()


def test_two_processes_share_an_embedded_store(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    to_parent, from_parent = ctx.Queue(), ctx.Queue()
    store = EmbeddedStore(tmp_path / "state.sqlite", max_history=1000)
    child = ctx.Process(target=_child, args=(str(store.path), to_parent, from_parent))
    child.start()
    try:
        assert to_parent.get(timeout=30) == "written"
        assert store.history("child", 10) == ["c1"]  # visible at once
        store.append_history("parent", ["p1"])
        from_parent.put("go")
        assert to_parent.get(timeout=20) == ["p1"]
        for i in range(200):
            store.append_history("shared", [f"p{i}"])
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    shared = store.history("shared", 1000)
    assert len(shared) == 400
    assert [x for x in shared if x[0] == "p"] == [f"p{i}" for i in range(200)]
    assert [x for x in shared if x[0] == "c"] == [f"c{i}" for i in range(200)]
    store.close()


def test_threads_share_one_embedded_store(tmp_path):
    store = EmbeddedStore(tmp_path / "state.sqlite", max_history=1000)

    def work(t: int) -> None:
        for i in range(50):
            store.append_history("u", [f"{t}-{i}"])
            store.history("u", 10)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.history("u", 1000)) == 200
    store.close()


# --------------------------------------------------------------------------- seeding


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """A prepared dataset: 3 users; u1 has two events at the same ts (raw order must hold)."""
    return prepared_log(
        tmp_path_factory.mktemp("seed"),
        ["u1", "u2", "u1", "u1", "u3", "u2", "u1", "u1"],
        ["a", "b", "z", "c", "d", "e", "y", "f"],
        [5, 1, 1, 5, 2, 3, 9, 7],
    )


def test_seed_from_dataset(make_store, small_dataset):
    store = make_store(max_history=10)
    store.append_history("u2", ["stale"])
    assert seed_from_dataset(store, small_dataset, max_history=4) == 3
    # u1 by time: z(1) a(5) c(5, raw order after a) f(7) y(9) -> last 4
    assert store.histories(["u1", "u2", "u3"], 10) == [["a", "c", "f", "y"], ["b", "e"], ["d"]]
    store.append_history("u3", ["new"])
    assert seed_from_dataset(store, small_dataset, max_history=4) == 0  # already seeded
    assert store.history("u3", 10) == ["d", "new"]
