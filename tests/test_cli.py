"""The `recstack` command tree, the YAML configs it reads, and the packaging it ships in."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from recstack.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    for group, sub in COMMANDS.items():
        if isinstance(sub, str):
            yield [group]
        else:
            yield from ([group, name] for name in sub)


@pytest.mark.parametrize("command", list(_commands()), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "--config" in capsys.readouterr().out


def _config_command(path: Path) -> list[str]:
    """The command a config file names in its first line: `# recstack data prepare --config …`."""
    first = path.read_text().splitlines()[0]
    match = re.match(r"# recstack ((?:\w+ )+)--config", first)
    assert match, (
        f"{path}: first line must name its command, e.g. '# recstack data prepare --config {path}'"
    )
    return match.group(1).split()


SEARCH_SPACES = sorted(ROOT.glob("configs/search/*.yaml"))  # see test_search_space.py
SERVE_CONFIGS = sorted(ROOT.glob("configs/serve_*.yaml"))  # Ray Serve YAMLs, checked below
LOOP_CONFIGS = sorted(ROOT.glob("configs/loop/*.yaml"))  # `recstack retrain`, checked below
MONITOR_CONFIGS = sorted(ROOT.glob("configs/monitor/*.yaml"))  # `recstack monitor`, below
CONFIGS = sorted(
    set(ROOT.glob("configs/**/*.yaml"))
    - set(SEARCH_SPACES)
    - set(SERVE_CONFIGS)
    - set(LOOP_CONFIGS)
    - set(MONITOR_CONFIGS)
)


def test_configs_exist():
    assert len(CONFIGS) >= 4, "configs/ lost its YAML files (check .gitignore)"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*_config_command(config), "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("config", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_serve_config_parses(config):
    from recstack.serving.config import read_serve_config

    assert config.read_text().startswith(f"# recstack serve --config {config.relative_to(ROOT)}")
    checked = read_serve_config(config)  # args, experiment arms, both deployments' models
    assert checked["args"].experiment is not None


@pytest.mark.parametrize("config", LOOP_CONFIGS, ids=lambda p: p.name)
def test_every_loop_config_parses(config, monkeypatch):
    from recstack.loop.config import read_loop_config

    monkeypatch.chdir(ROOT)  # its paths are relative to the checkout, as the README runs it
    assert config.read_text().startswith(f"# recstack retrain --config {config.relative_to(ROOT)}")
    loop = read_loop_config(config.relative_to(ROOT))
    assert loop.events and loop.base_dataset and loop.config.train.ranker.config.is_file()


@pytest.mark.parametrize("config", MONITOR_CONFIGS, ids=lambda p: p.name)
def test_every_monitor_config_parses(config):
    from recstack.loop.monitor_config import MonitorConfig, read_monitor_config

    assert config.read_text().startswith("# recstack monitor --events ")
    assert f"--config {config.relative_to(ROOT)}" in config.read_text().splitlines()[0]
    assert read_monitor_config(config) == MonitorConfig()  # the defaults, written out


@pytest.mark.parametrize("search", SEARCH_SPACES, ids=lambda p: p.name)
def test_every_search_space_names_its_tune_command(search):
    first = search.read_text().splitlines()[0]
    match = re.match(r"# recstack tune --config (\S+) --search (\S+)", first)
    assert match, f"{search}: first line must be '# recstack tune --config ... --search {search}'"
    assert (ROOT / match.group(1)).is_file() and ROOT / match.group(2) == search


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "recstack"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "data" in proc.stdout and "eval" in proc.stdout


def test_data_commands_do_not_import_torch():
    code = "import sys; from recstack.cli import _components; _components(['data', 'prepare']); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_the_whole_command_tree_loads_without_lightning():
    """`recstack --help` builds every command's parser; Lightning (and the ONNX exporter) are
    loaded by the commands that run, not there: they take seconds to import."""
    code = (
        "import sys; from recstack.cli import _components; _components([]); "
        "print(sorted(m for m in ('lightning', 'torch.onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_package_directory_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = {v: k for k, v in setuptools["package-dir"].items()}
    found = set()
    for folder, package in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed


def test_serve_without_api_keys_says_how_to_set_them(monkeypatch, capsys):
    from recstack.serving.auth import KEY_ENV, KEYS_FILE_ENV

    for name in (*KEY_ENV.values(), KEYS_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--config", str(ROOT / "configs" / "serve_ml100k.yaml")]) == 2
    assert "no API keys: set RECSTACK_APP_KEYS" in capsys.readouterr().err  # before Ray starts
