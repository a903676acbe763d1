"""Output folders: the one rule for what is one, and staged writes that appear whole or not at all."""

from __future__ import annotations

import pytest

from fxbench.errors import FxbenchError, OutputExistsError
from fxbench.jobs.folders import output_folder, saved_program, staged_directory


def test_an_output_folder_is_what_fxbench_writes_and_not_a_saved_model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "report.json").write_text("{}")  # a model folder stays a model folder, whatever else it holds
    optimized, exported, empty = tmp_path / "optimized", tmp_path / "exported", tmp_path / "empty"
    for folder in (optimized, exported, empty):
        folder.mkdir()
    (optimized / "model.pt2").write_bytes(b"pt2")
    (exported / "report.json").write_text("{}")
    assert output_folder(model) is None and output_folder(empty) is None and output_folder(str(tmp_path / "nope")) is None
    assert output_folder(str(optimized)) == optimized and output_folder(exported) == exported
    assert output_folder(None) is None and output_folder("") is None and output_folder("org/hub-id") is None


def test_a_saved_program_is_a_pt2_file_or_an_output_folders(tmp_path):
    (tmp_path / "x.pt2").write_bytes(b"pt2")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.pt2").write_bytes(b"pt2")
    (tmp_path / "onnx-only").mkdir()
    (tmp_path / "onnx-only" / "report.json").write_text("{}")
    assert saved_program(str(tmp_path / "x.pt2"), "export") == tmp_path / "x.pt2"
    assert saved_program(str(tmp_path / "out"), "export") == tmp_path / "out" / "model.pt2"
    assert saved_program("org/hub-id", "export") is None and saved_program(None, "export") is None
    with pytest.raises(FxbenchError, match="without model.pt2 .*; inspect the model instead"):
        saved_program(str(tmp_path / "onnx-only"), "inspect")


def test_staged_files_are_added_to_a_folder_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.pt2").write_text("kept")
    with pytest.raises(RuntimeError):
        with staged_directory(folder, add_to=True) as staging:
            (staging / "model.onnx").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(p.name for p in folder.iterdir()) == ["model.pt2"]
    with staged_directory(folder, add_to=True) as staging:
        (staging / "report.json").write_text("new")
        (staging / "model.onnx").write_text("onnx")
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.pt2", "report.json"]
    assert (folder / "model.pt2").read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_staged_folder_replaces_only_with_force(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="not empty; pass --force"):
        with staged_directory(folder):
            pass
    with staged_directory(folder, force=True) as staging:
        (staging / "model.pt2").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["model.pt2"] and [p.name for p in tmp_path.iterdir()] == ["out"]
