"""The folder layout of `gem-labeler evaluate --folder`: label maps and labels outside the vocabulary."""

from __future__ import annotations

import pytest

from backend.evaluation.folder_source import FolderLayoutError, read_label_map, split_label_map
from backend.labelstudio.label_config import parse_label_config

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="b" toName="image"><Label value="cat"/><Label value="void"/></BrushLabels></View>"""


def test_labels_json_and_txt(tmp_path):
    (tmp_path / "labels.txt").write_text("background\ncat\n\nsky\n")
    assert read_label_map(tmp_path) == {0: "background", 1: "cat", 3: "sky"}
    (tmp_path / "labels.json").write_text('{"0": "background", "7": "cat"}')  # json wins over txt
    assert read_label_map(tmp_path) == {0: "background", 7: "cat"}
    (tmp_path / "labels.json").write_text('["cat"]')
    with pytest.raises(FolderLayoutError, match="pixel value"):
        read_label_map(tmp_path)


def test_missing_label_map(tmp_path):
    with pytest.raises(FolderLayoutError, match="labels.json nor labels.txt"):
        read_label_map(tmp_path)


def test_background_and_unknown_values():
    vocabulary = parse_label_config(CONFIG)
    kept, problems = split_label_map({0: "background", 1: "cat", 2: "void", 3: "unicorn"}, vocabulary,
                                     vocabulary.foreground)
    assert kept == {1: "cat"}
    assert len(problems) == 1 and "unicorn" in problems[0]
