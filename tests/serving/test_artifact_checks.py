"""An artifact is checked completely before it may serve: every file loads (no pickle),
arrays are finite with the right dtype and shape, the model kind fits the side, and one run
on sample inputs gives finite scores. Each refusal is one line; a slot keeps its old model."""

import json

import pytest
from bad_artifacts import FORGERIES, copy_with_hashes

from recstack.errors import DataError
from recstack.serving.model_slots import ModelSlots
from recstack.serving.ranking import Ranker
from recstack.serving.retrieval import Retriever


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize(("side", "load"), [("ranker", Ranker.load), ("retriever", Retriever.load)])
def test_a_forged_artifact_is_refused_in_one_line(ml100k_artifacts, tmp_path, forgery, side, load):
    change, says = FORGERIES[forgery]
    forged = copy_with_hashes(ml100k_artifacts[side], tmp_path / forgery, change)
    with pytest.raises(DataError) as exc:
        load(forged)
    assert says in one_line(exc) and str(forged) in str(exc.value)


def test_a_two_tower_artifact_is_no_ranker(ml100k_artifacts):
    with pytest.raises(DataError) as exc:
        Ranker.load(ml100k_artifacts["retriever"])
    assert "a 'two_tower' model, where this side serves sasrec" in one_line(exc)


def test_good_artifacts_load_and_a_slot_keeps_its_model_when_the_next_one_is_bad(
    ml100k_artifacts, tmp_path
):
    slots = ModelSlots(Ranker.load)
    assert slots.apply({"main": str(ml100k_artifacts["ranker"])}) == {}
    good = slots.get("main")
    nan = copy_with_hashes(
        ml100k_artifacts["ranker"], tmp_path / "nan", FORGERIES["nan_embeddings"][0]
    )
    errors = slots.apply({"main": str(nan)})
    assert "NaN or infinite" in errors["main"] and slots.get("main") is good


def _earlier_layout(dst) -> None:
    """The manifest as exports before the history window's rename wrote it."""
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["onnx"]["max_length"] = manifest.pop("history_len")
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("side", "load"), [("ranker", Ranker.load), ("retriever", Retriever.load)])
def test_an_artifact_exported_before_the_rename_still_serves(
    ml100k_artifacts, tmp_path, side, load
):
    old = copy_with_hashes(ml100k_artifacts[side], tmp_path / "old", _earlier_layout)
    assert "max_length" in json.loads((old / "manifest.json").read_text())["onnx"]
    assert load(old).artifact.manifest.history_len == 50
