"""Passwords in storage URLs never reach messages or logs."""

from recstack.urls import redacted


def test_redacted_hides_only_the_password():
    assert redacted("postgresql+psycopg://tuner:s3cret@db.example:5432/optuna") == (
        "postgresql+psycopg://tuner:***@db.example:5432/optuna"
    )
    assert redacted("redis://:pw@10.0.0.2/0") == "redis://:***@10.0.0.2/0"
    assert redacted("sqlite:///runs/tune/study.db") == "sqlite:///runs/tune/study.db"
