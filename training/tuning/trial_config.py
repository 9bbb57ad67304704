"""A trial's training config: the base YAML plus the study's fixed values and sampled params.

Dotted keys are `recstack train` flag paths; on a `class_path` section they may skip
`init_args` (`model.optim.lr` is `model.init_args.optim.lr`), as on the command line.
"""

import copy
from pathlib import Path
from typing import Any

import yaml

from recstack.errors import RecstackError, first_line

HEADER = "# recstack train --config {path}\n"


def _child(node: dict, part: str) -> dict:
    """Where `part` lives under `node`: the node itself, or its init_args for a class."""
    if part not in node and ("class_path" in node or "init_args" in node):
        return node.setdefault("init_args", {})
    return node


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = _child(node, part)
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecstackError(f"cannot set {key}: {part} is {child!r}, not a section")
        node = child
    _child(node, last)[last] = value


MISSING = object()


def get_dotted(config: dict, key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def read_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise RecstackError(f"cannot read training config {path}: {first_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise RecstackError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise RecstackError(f"training config {path} must be a YAML mapping")
    return config


def trial_config(base: dict, values: dict[str, Any], run_dir: Path) -> dict:
    """A complete `recstack train` config: `base` with `values` set and its own run dir."""
    config = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(config, key, value)
    config["run_dir"] = str(run_dir)
    config.pop("ckpt_path", None)
    return config


def write_config(config: dict, path: Path, comment: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER.format(path=path) + "".join(f"# {line}\n" for line in comment.splitlines())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
    return path
