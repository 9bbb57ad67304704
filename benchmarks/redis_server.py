"""A throwaway `redis-server` on a loopback port that benchmarks and tests kill, freeze,
empty and restart (benchmarks/faults.py, tests/serving)."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


class NoRedis(RuntimeError):
    """redis-server is missing, or did not start."""


class RedisServer:
    """A `redis-server` process (NoRedis when the binary is missing).

    durable: AOF with an fsync on every write, as a production Redis keeps its data;
    otherwise nothing is persisted.
    """

    def __init__(self, workdir: Path, port: int, db: int = 0, durable: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise NoRedis("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.workdir, self.port, self.db = binary, workdir, port, db
        self.durable = durable
        self.url = f"redis://127.0.0.1:{port}/{db}"
        self.proc: subprocess.Popen | None = None

    def client(self):
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, db=self.db, socket_timeout=2, decode_responses=True
        )

    def start(self) -> None:
        import redis

        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else []
        self.proc = subprocess.Popen(
            [self.binary, *args, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        err = self.proc.stderr.read().decode() if self.proc.poll() else "timeout"
                        raise NoRedis(
                            f"redis-server on port {self.port} did not start: {err}"
                        ) from None
                    time.sleep(0.05)

    def kill(self) -> None:
        """Crash it (SIGKILL): connections drop, the port refuses."""
        self.proc.kill()
        self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections hang (the kernel still accepts new ones) instead of failing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def empty(self) -> None:
        """FLUSHALL: every key of every db gone at once, the server still up (as a Redis
        restarted without its data, minus the outage)."""
        with self.client() as client:
            client.flushall()

    def keys(self) -> int:
        """How many keys the server's db holds (DBSIZE)."""
        with self.client() as client:
            return int(client.dbsize())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
