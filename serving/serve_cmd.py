"""`recstack serve`: start Ray with the config's settings and run the Serve application.

    recstack serve --config configs/serve_ml100k.yaml            # runs until Ctrl-C / SIGTERM
    recstack serve --config configs/serve_ml100k.yaml --update   # new user_config (artifact
                                                                 # version) into the running app
    recstack serve --config configs/serve_ml100k.yaml --ray-env  # the env for `ray start`

The config is the same YAML `serve run` takes. It is checked before Ray starts (args, models,
experiment arms, every artifact's manifest and hashes, the `ray:` section, the HAProxy
binary), so a typo costs a second, not a half-started cluster. Ray starts with the `ray:`
section's process settings (serving/ray_runtime.py: HAProxy and direct ingress, throughput
mode, a lean node) and quiet defaults: no usage stats, no dashboard, no log forwarding, its
temp dir under runs/ray. A local Ray is bound to loopback with Ray's token auth on (its token
in the temp dir, not the home directory; docs/security.md). Once the app answers, the
settings and the listening sockets are checked on the running processes.
"""

import contextlib
import inspect
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from recstack.artifact_manifest import read_artifact_manifest
from recstack.errors import RecstackError, first_line
from recstack.serving import metrics, ray_runtime
from recstack.serving.auth import ApiKeys
from recstack.serving.config import INGRESS, RANKER, RETRIEVER, read_serve_config

QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}

log = logging.getLogger(__name__)


def start_ray(temp_dir: Path = Path("runs/ray"), address: str | None = None) -> None:
    """Start (or join, with `address`) a local Ray instance without the noisy extras."""
    import ray

    os.environ.update(QUIET_ENV)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no "Started Serve ..." lines
    # no "Token authentication is enabled" line: a local Ray always has it
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    if address:  # a cluster's auth is its own (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH: scaling.md)
        if address == "auto":  # the local Ray `recstack serve` started (--update)
            ray_runtime.local_token(temp_dir, new=False)
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        return
    temp_dir = Path(temp_dir).resolve()
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray_runtime.local_token(temp_dir, new=True)
    ray_runtime.loopback_node()  # GCS, raylet, agents, workers: on 127.0.0.1 only
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=100 * 1024**2,
        _temp_dir=str(temp_dir),
        configure_logging=False,
    )


def _check_artifacts(models: dict) -> None:
    for side, config in models.items():
        for model, path in config.models.items():
            try:
                read_artifact_manifest(Path(path))
            except RecstackError as exc:
                raise RecstackError(f"{side} model {model!r}: {exc}") from None


def application(checked: dict, config: Path):
    """The Serve application of a checked config, with each deployment's options applied."""
    from recstack.serving.app import Ingress, RankerDeployment, RetrieverDeployment

    _check_artifacts(checked["models"])

    def options(deployment, name: str):
        """The YAML's options for `name` (as `serve deploy` reads them; an unknown one fails)."""
        given = {k: v for k, v in checked["deployments"].get(name, {}).items() if k != "name"}
        known = {p for p in inspect.signature(deployment.options).parameters if p[0] != "_"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise RecstackError(
                f"{config}: deployment {name} has unknown options {unknown}; Ray Serve's are "
                f"{sorted(known - {'func_or_class', 'name', 'version'})}"
            )
        return deployment.options(**given)

    args = checked["app"].get("args") or {}
    if checked["args"].pipeline == "colocated":
        return options(Ingress, INGRESS).bind(None, None, args)
    app_args = checked["args"]
    side = (app_args.store, app_args.onnxruntime.model_dump(), app_args.models_from)
    retriever = options(RetrieverDeployment, RETRIEVER).bind(*side)
    ranker = options(RankerDeployment, RANKER).bind(*side)
    return options(Ingress, INGRESS).bind(retriever, ranker, args)


def app_name(checked: dict) -> str:
    """The Serve application's name in a checked config (Serve's default: "recstack" here)."""
    return checked["app"].get("name", "recstack")


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RecstackError(f"the service at {url} did not become ready in {timeout_s:.0f} s: {last}")


def start(
    config: Path,
    address: str | None = None,
    temp_dir: Path = Path("runs/ray"),
    on_ray_started: Callable[[], None] | None = None,
) -> str:
    """Deploy the config's app (start Ray if needed); returns the base URL once /readyz is 200.
    `on_ray_started` runs right after this process connects to Ray."""
    import ray

    checked = read_serve_config(config)
    http = checked["document"].get("http_options") or {}
    host, port = http.get("host", "127.0.0.1"), int(http.get("port", 8000))
    new_local = address is None and not ray.is_initialized()
    if new_local:
        ApiKeys.from_environment()  # new replicas read the keys too: say what is missing once
        # before Ray's processes start (read once)
        ray_runtime.apply(checked["ray"], port, Path(temp_dir).resolve())
    app = application(checked, config)
    from ray import serve

    shared = (  # one /metrics sums every replica: a folder the new Ray's processes inherit
        metrics.shared_across_processes(Path(temp_dir).resolve() / "metrics")
        if new_local
        else contextlib.nullcontext()
    )
    with shared:
        start_ray(temp_dir, address)
    if on_ray_started:
        on_ray_started()
    proxy_location = checked["document"].get("proxy_location", "HeadOnly")  # EveryNode: cluster
    # no access log unless the config asks for one: request lines carry user ids in their
    # paths (as on the uvicorn engine), and a log line per request costs CPU
    logging_config = {
        "enable_access_log": False,
        **(checked["document"].get("logging_config") or {}),
    }
    serve.start(
        proxy_location=proxy_location,
        http_options={"host": host, "port": port},
        logging_config=logging_config,
    )
    try:
        serve.run(
            app,
            name=app_name(checked),
            route_prefix=checked["app"].get("route_prefix", "/"),
            blocking=False,
            logging_config=logging_config,
        )
    except RuntimeError as exc:  # a replica failed to start: its traceback is in Ray's logs
        logs = Path(temp_dir).resolve() / "session_latest" / "logs" / "serve"
        raise RecstackError(f"{first_line(exc)}; the replicas' errors are in {logs}") from None
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_ready(url)
    if address is None:
        try:
            ray_runtime.verify(checked["ray"], port)
            exposed = ray_runtime.check_exposure(host, port)["exposed"]
        except BaseException:
            stop()  # a failed check leaves no Ray of ours running
            raise
        if exposed:  # http_options.host is not loopback: Serve binds these there too
            print(
                f"warning: besides the API port, {', '.join(map(str, exposed))} listen on "
                f"{host}: firewall them (docs/security.md)",
                file=sys.stderr,
            )
    return url


def stop(app: str | None = None) -> None:
    """Delete the application (its replicas drain and stop gracefully), then leave Ray. With
    `app` (an app on a cluster this process joined) only that app goes and the cluster runs on;
    without, every app goes and the local Ray ends, Serve's controller and proxy with it.

    Not serve.shutdown(): it waits on a controller call that the controller ends by killing
    itself, which Ray prints as a failed task ("… killed by `ray.kill`") on every stop."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            for name in [app] if app else list(serve.status().applications):  # none: no Serve
                try:
                    serve.delete(name)
                except Exception as exc:  # a replica that hangs: Ray ends it with the cluster
                    log.warning("application %s did not stop gracefully: %s", name, first_line(exc))
        finally:
            ray.shutdown()
    if app is None:
        ray_runtime.reap_haproxy()


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop, kill) stops the service like Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def serve_forever(config: Path, update: bool = False, address: str | None = None) -> None:
    """Run the recstack service described by a Ray Serve config YAML.

    Args:
        config: Serve config YAML (e.g. configs/serve_ml100k.yaml); `serve run` takes it too.
        update: apply the config to the app already running on this machine's Ray (e.g. a new
            artifact version in a deployment's user_config: replicas swap models in place)
            and exit.
        address: a Ray cluster to join (default: start a local one; with --update: "auto").
    """
    if update:
        url = start(config, address=address or "auto")
        print(f"updated the running service at {url}")
        return
    # on a cluster this process joined, Ctrl-C removes only this app (named before it starts,
    # so that stopping never depends on the config file still being readable)
    checked = read_serve_config(config)
    own_app = app_name(checked) if address else None
    if address:
        print(
            "joining a running Ray cluster: it keeps the Serve settings its `ray start` was "
            "given (see `recstack serve --config <yaml> --ray-env`)"
        )
    _stop_on_sigterm()
    try:
        # again once Ray is up: ray.init installs a SIGTERM handler of its own (a core dump and
        # an abort), and the service answers before start() returns
        url = start(config, address=address, on_ray_started=_stop_on_sigterm)
        print(f"recstack is serving at {url}  (OpenAPI: {url}/docs; Ctrl-C stops it)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop(own_app)


def serve_cli(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="recstack serve", description=serve_forever.__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="Ray Serve config YAML")
    parser.add_argument("--update", action="store_true", help="apply to the running app and exit")
    parser.add_argument("--address", help="Ray cluster address to join (default: a local Ray)")
    parser.add_argument(
        "--ray-env",
        action="store_true",
        help="print the environment the config's `ray:` section gives Ray's processes (export "
        "it before `ray start` on each node of a cluster) and exit",
    )
    parser.add_argument(
        "--engine",
        choices=("ray", "uvicorn"),
        default="ray",
        help="ray: Ray Serve deployments (default); uvicorn: the same API in uvicorn worker "
        "processes with the models in-process (one machine, lowest latency)",
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args(argv)
    if args.ray_env:
        print(ray_runtime.env_lines(read_serve_config(args.config)["ray"]))
        return
    if args.engine == "uvicorn":
        from recstack.serving.local_server import run_uvicorn

        if args.update or args.address:
            parser.error("--update and --address need --engine ray")
        run_uvicorn(args.config, args.workers)
        return
    serve_forever(args.config, args.update, args.address)
