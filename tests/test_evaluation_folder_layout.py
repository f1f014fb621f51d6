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


def test_ignored_values():
    from backend.evaluation.folder_source import ignore_values

    assert ignore_values({0: "background", 1: "cat"}) == {255}  # 255 unnamed: the VOC void band
    assert ignore_values({0: "background", 255: "cat"}) == set()  # a map naming 255 means it
    assert ignore_values({0: "background", 5: "VOID", 6: "Ignore", 255: "background"}) == {5, 6}


def test_ignore_names_are_not_problems():
    vocabulary = parse_label_config(CONFIG)
    kept, problems = split_label_map({0: "background", 1: "cat", 2: "Ignore", 3: "void"}, vocabulary,
                                     vocabulary.foreground)
    assert kept == {1: "cat"} and problems == []


def test_png_truth_ignore_mask(tmp_path):
    import numpy as np
    from PIL import Image

    from backend.evaluation.folder_source import _png_truth, ignore_values

    indices = np.zeros((14, 14), np.uint8)
    indices[1:13, 1:13] = 255  # the band...
    indices[2:12, 2:12] = 1  # ...around a 10x10 cat
    indices[0, 0] = 4  # unnamed, not 255: background, reported
    indices[13, 13] = 9  # named void in the map
    Image.fromarray(indices, mode="L").save(tmp_path / "a.png")
    label_map = {0: "background", 1: "cat", 9: "void"}
    shape, annotated, ignore, problems = _png_truth(tmp_path / "a.png", {1: "cat"}, set(label_map),
                                                    ignore_values(label_map))
    assert shape == (14, 14)
    assert int(annotated["cat"].sum()) == 100
    assert ignore is not None and int(ignore.sum()) == 44 + 1
    assert ignore[1, 1] and ignore[13, 13] and not ignore[0, 0] and not ignore[5, 5]
    assert problems == ["mask values [4] are not in the label map: counted as background"]
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(tmp_path / "b.png")
    assert _png_truth(tmp_path / "b.png", {1: "cat"}, set(label_map), ignore_values(label_map))[2] is None
