"""`recstack retrain` at its edges: each problem is one line and a non-zero exit, and nothing
is published."""

from pathlib import Path

import yaml
from service_config import free_port, write_serve_config

from recstack.cli import main


def loop_config(root: Path, **changes) -> Path:
    serve = write_serve_config(
        root / "serve.yaml",
        {"dataset": root / "data", "ranker": root / "r", "retriever": root / "t"},
        root / "state",
        free_port(),
    )
    (root / "train.yaml").write_text("seed_everything: 0\n")
    config = {
        "loop_dir": str(root / "loop"),
        "serve_config": str(serve),
        "service": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "key_env": "LOOP_ERRORS_KEY",
        "train": {side: {"config": str(root / "train.yaml")} for side in ("ranker", "retriever")},
    } | changes
    path = root / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_error_line(capsys) -> str:
    """The error line (progress lines may come before it), and no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_service_that_is_down(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOOP_ERRORS_KEY", "k" * 20)
    assert main(["retrain", "--config", str(loop_config(tmp_path))]) == 2
    assert "does not answer" in one_error_line(capsys)
    assert not (tmp_path / "loop" / "audit.jsonl").exists()


def test_a_missing_key_and_a_bad_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOOP_ERRORS_KEY", raising=False)
    assert main(["retrain", "--config", str(loop_config(tmp_path))]) == 2
    assert "LOOP_ERRORS_KEY" in one_error_line(capsys)
    bad = loop_config(tmp_path, gate={"ndcg_tolerance": "lots"}, colour="red")
    assert main(["retrain", "--config", str(bad)]) == 2
    line = one_error_line(capsys)
    assert "gate.ndcg_tolerance" in line and "colour" in line


def test_history_and_rollback_with_nothing_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOOP_ERRORS_KEY", "k" * 20)
    config = str(loop_config(tmp_path))
    assert main(["retrain", "--config", config, "--history"]) == 0
    assert "no retrain recorded" in capsys.readouterr().out
    assert main(["retrain", "--config", config, "--rollback"]) == 2
    assert "nothing to roll back" in one_error_line(capsys)
