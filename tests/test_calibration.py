"""Calibration: the fit's figures against hand-computed cases, its adoption rule on synthetic analyses whose
defaults are miscalibrated (or not), and the Redis store's versions, rollback and lock."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import redis

from backend.calibration.fit import (
    Example,
    expected_calibration_error,
    fit,
    folds,
    label_examples,
    negative_thresholds,
    platt,
    quality,
)
from backend.jobqueue import calibrations
from backend.options import ProjectOptions
from gem_engine.engine import ImageAnalysis

LABELS = ["a", "b", "c", "d"]
SIDE = 32  # image side; maps are 8 x 8, one patch per 4 x 4 pixels
BACKGROUND_COSINE = 0.25
BASE = ProjectOptions().with_params({"presence": "image"})


def scene(rng: np.random.Generator, present: str, absent_probability: dict[str, float],
          present_probability: float = 0.99) -> Example:
    """A 32 x 32 image holding one object of `present` (an 8-16 px square); each absent label's map has a
    spurious 2 x 2 patch peak above the background, and its image score makes its presence probability
    (two-way softmax at scale 100 against the background) what is asked."""
    size = int(rng.integers(2, 5))  # in patches
    row, col = (int(v) for v in rng.integers(0, 8 - size, 2))
    object_patches = np.zeros((8, 8), dtype=bool)
    object_patches[row:row + size, col:col + size] = True
    maps = np.full((len(LABELS), 8, 8), 0.10, dtype=np.float32) + rng.normal(0, 0.005, (len(LABELS), 8, 8)).astype(np.float32)
    for index, label in enumerate(LABELS):  # an absent label's map peaks somewhere too (over the background)
        if label != present:
            r, c = (int(v) for v in rng.integers(0, 6, 2))
            maps[index, r:r + 2, c:c + 2] = 0.25
    maps[LABELS.index(present)][object_patches] = 0.30
    background = np.where(object_patches, 0.10, 0.20)[None].astype(np.float32)

    def cosine(p: float) -> float:  # the image score whose presence probability is p
        return BACKGROUND_COSINE + float(np.log(p / (1 - p))) / 100.0

    scores = np.array([cosine(present_probability) if label == present else cosine(absent_probability[label])
                       for label in LABELS], dtype=np.float32)
    analysis = ImageAnalysis(maps=maps, background_maps=background, label_scores=scores,
                             background_scores=np.array([BACKGROUND_COSINE], dtype=np.float32), logit_scale=100.0)
    truth = {present: np.kron(object_patches, np.ones((4, 4), dtype=bool))}
    return Example(f"{present} {row},{col}", analysis, truth, (SIDE, SIDE))


def scenes(seed: int, count: int, absent: dict[str, float]) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [scene(rng, LABELS[i % len(LABELS)], absent) for i in range(count)]


def test_quality_of_predicting_nothing_is_the_hand_computed_all_background_figure():
    example = scenes(0, 1, dict.fromkeys(LABELS, 0.5))[0]
    object_pixels = int(example.truth["a"].sum())
    got = quality([example], LABELS, BASE.with_params({"presence_threshold": 1.0, "presence": "image"}))
    # Classes that occur: background (predicted everywhere) and "a" (annotated, never predicted).
    assert got.miou == pytest.approx(((SIDE * SIDE - object_pixels) / (SIDE * SIDE) + 0.0) / 2)
    assert got.presence_f1 == 0.0 and got.score_ece is None and got.examples == 1


def test_quality_counts_an_absent_label_given_a_region_as_a_false_positive():
    example = scenes(0, 1, dict.fromkeys(LABELS, 0.01))[0]
    clean = quality([example], LABELS, BASE)
    assert clean.presence_f1 == 1.0  # the present label found, nothing else
    noisy = scenes(0, 1, {**dict.fromkeys(LABELS, 0.01), "b": 0.9})[0]
    got = quality([noisy], LABELS, BASE)
    assert got.presence_f1 == pytest.approx(2 / 3)  # one true positive, one false positive: 2 / (2 + 1)
    assert got.miou < clean.miou


def test_expected_calibration_error_by_hand():
    # Bins of width 0.1: 0.95 (hit) in bin 9, 0.15 (miss) in bin 1: (|0.95 - 1| + |0.15 - 0|) / 2.
    assert expected_calibration_error([0.95, 0.15], [True, False]) == pytest.approx(0.1)
    # Two scores in one bin: |mean score - hit rate| weighted by the bin's share.
    assert expected_calibration_error([0.62, 0.68], [True, False]) == pytest.approx(0.15)
    assert expected_calibration_error([], []) is None


def test_folds_hold_every_example_out_exactly_once():
    for count in (2, 5, 7, 26):
        held = np.concatenate(folds(count))
        assert sorted(held.tolist()) == list(range(count))
        assert len(folds(count)) == min(3, count)


def test_a_miscalibrated_default_is_fitted_and_adopted_and_improves_new_images():
    # Absent labels score 0.7: above the default threshold 0.5, so each image gets three wrong labels.
    absent = dict.fromkeys(LABELS, 0.7)
    result = fit(scenes(1, 24, absent), LABELS, BASE, {})
    assert result.adopted, result.reason
    assert result.params["presence_threshold"] > 0.7
    assert result.fitted.miou > result.current.miou and result.fitted.presence_f1 > result.current.presence_f1
    fresh = scenes(2, 40, absent)
    before, after = quality(fresh, LABELS, BASE), quality(fresh, LABELS, BASE.with_params(result.params))
    assert after.miou > 1.5 * before.miou
    # Before: up to three wrong labels per image (2 / (2 + 3) = 0.4 when every spurious peak shows).
    assert after.presence_f1 == 1.0 and before.presence_f1 < 0.5


def test_a_well_calibrated_default_is_not_replaced():
    examples = scenes(3, 24, dict.fromkeys(LABELS, 0.01))
    result = fit(examples, LABELS, BASE, {})
    assert not result.adopted and "not adopted" in result.reason
    assert result.fitted.miou <= result.current.miou + 1e-9 or result.fitted.presence_f1 < result.current.presence_f1


def test_too_few_annotated_images_keep_the_params_in_force():
    current = {"presence_threshold": 0.6}
    result = fit(scenes(4, 3, dict.fromkeys(LABELS, 0.7)), LABELS, BASE, current, min_examples=5)
    assert not result.adopted and result.params == current
    assert "3 usable annotated image(s); calibration needs at least 5" == result.reason


def test_only_labels_with_enough_examples_get_their_own_presence_threshold():
    # "a" is absent at 0.85 (needs its own high threshold), the others at 0.05. 32 scenes: 8 per label.
    absent = {"a": 0.85, "b": 0.05, "c": 0.05, "d": 0.05}
    rng = np.random.default_rng(5)
    examples = [scene(rng, LABELS[i % 4], absent) for i in range(32)]
    counts = label_examples(examples, LABELS)
    assert counts == dict.fromkeys(LABELS, 8)
    result = fit(examples, LABELS, BASE, {}, min_examples=8)
    assert result.adopted, result.reason
    assert result.default_labels == []
    thresholds = dict(result.params.get("label_presence_thresholds") or {})
    assert thresholds.get("a", result.params.get("presence_threshold", 0.5)) > 0.85
    # Asking for more examples than any label has, with or without it (8 images with, 24 without), leaves every
    # label on the global threshold.
    strict = fit(examples, LABELS, BASE, {}, min_examples=25)
    assert strict.default_labels == LABELS and "label_presence_thresholds" not in strict.params


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def test_negative_thresholds_by_hand():
    # Presence probabilities of 3 images x 3 labels, as logits; "b" is present in image 0, "c" in images 0 and 1.
    logits = np.array([[-2.0, 3.0, 2.0],
                       [0.0, -1.0, 2.0],
                       [-1.0, -1.0, -1.0]])
    present = np.array([[False, True, True],
                        [False, False, True],
                        [False, False, False]])
    probability = 1 / (1 + np.exp(-logits))
    got = negative_thresholds(probability, present, ["a", "b", "c"], 2.0, 2)
    # Absent logits: a -2, 0, -1 (mean -1, variance 2/3); b -1, -1 (mean -1, variance 0); c: one image, fewer
    # than 2, so no threshold of its own. Pooled over every absent entry: -2, 0, -1, -1, -1, -1: mean -1,
    # variance 1/3. Each label's figures are shrunk to the pooled ones with the weight of 2 images.
    a_var = 3 / 5 * (2 / 3) + 2 / 5 * (1 / 3)
    b_var = 2 / 4 * 0.0 + 2 / 4 * (1 / 3)
    assert set(got) == {"a", "b"}
    assert got["a"] == pytest.approx(_sigmoid(-1 + 2 * np.sqrt(a_var)))
    assert got["b"] == pytest.approx(_sigmoid(-1 + 2 * np.sqrt(b_var)))
    # z = 0: the shrunk mean alone, the probability of the average absent image.
    assert negative_thresholds(probability, present, ["a", "b", "c"], 0.0, 2)["a"] == pytest.approx(_sigmoid(-1))
    assert negative_thresholds(probability, np.ones_like(present), ["a", "b", "c"], 1.0, 1) == {}


def test_a_label_seen_in_few_images_gets_its_threshold_from_the_images_without_it():
    # "a" fires at 0.85 (+-) wherever it is absent: above the global grid's highest threshold (0.8), so no
    # global value can drop it, and it is present in only 2 images, too few (5) for a threshold by its F1.
    # The 22 images without it show where its absent scores lie.
    rng = np.random.default_rng(11)

    def draw(count: int, a_count: int) -> list[Example]:
        present = ["a"] * a_count + [LABELS[1 + i % 3] for i in range(count - a_count)]
        return [scene(rng, label, {"a": float(rng.uniform(0.82, 0.88)), "b": 0.05, "c": 0.05, "d": 0.05})
                for label in present]

    examples = draw(24, 2)
    assert label_examples(examples, LABELS)["a"] == 2
    result = fit(examples, LABELS, BASE, {}, min_examples=5)
    assert result.adopted, result.reason
    threshold = dict(result.params["label_presence_thresholds"])["a"]
    assert 0.88 < threshold < 0.99  # above where it fires when absent, below its score when present
    fresh = draw(40, 10)
    before, after = quality(fresh, LABELS, BASE), quality(fresh, LABELS, BASE.with_params(result.params))
    assert after.presence_f1 == 1.0 and before.presence_f1 < 0.8
    assert after.miou > before.miou


def test_platt_by_hand():
    # Every score 0.5 (logit 0): the slope has nothing to act on, so the fit is the offset of the hit rate,
    # logit(1 / 4); the pull towards slope 1 keeps it at 1.
    got = platt([0.5] * 40, [True] * 10 + [False] * 30)
    assert got["score_offset"] == pytest.approx(_logit(0.25), abs=1e-3)
    assert got["score_slope"] == pytest.approx(1.0, abs=1e-3)
    assert platt([0.5] * 19, [True] * 10 + [False] * 9) == {}  # fewer than 20 regions: scores stay
    # Scores that separate right from wrong perfectly would want a steep slope; the fit keeps slope 1 and
    # moves only the offset: equal counts on both sides of 0.5 at logits +-1 need none.
    sharp = platt([0.73] * 20 + [0.27] * 20, [True] * 20 + [False] * 20)
    assert sharp["score_slope"] == 1.0 and sharp["score_offset"] == pytest.approx(0.0, abs=1e-3)


def test_a_background_label_of_the_config_is_never_fitted_or_scored():
    absent = dict.fromkeys(LABELS, 0.7)
    examples = scenes(6, 12, absent)
    with_background = quality(examples, LABELS, BASE, background_labels=["d"])
    assert with_background.presence_f1 != quality(examples, LABELS, BASE).presence_f1
    result = fit(examples, LABELS, BASE, {}, background_labels=["d"], min_examples=1)
    assert "d" not in dict(result.params.get("label_presence_thresholds") or {})


# ------------------------------------------------------------------------------------------------ store


@pytest.fixture()
def conn(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
def prefix(conn):
    name = f"cal{uuid.uuid4().hex[:8]}"
    yield name
    for key in conn.scan_iter(match=f"{name}:*"):
        conn.delete(key)


def test_versions_are_numbered_activated_and_rolled_back(conn, prefix):
    assert calibrations.active_params(conn, prefix, "7") == {}
    assert calibrations.add_version(conn, prefix, "7", {"presence_threshold": 0.7}, {"reason": "first"}) == 1
    assert calibrations.add_version(conn, prefix, "7", {"presence_threshold": 0.8}, {"reason": "second"}) == 2
    assert calibrations.active_params(conn, prefix, "7") == {"presence_threshold": 0.8}
    assert calibrations.active_params(conn, prefix, "8") == {}  # per project
    assert calibrations.rollback(conn, prefix, "7") == 1
    assert calibrations.active_params(conn, prefix, "7") == {"presence_threshold": 0.7}
    assert calibrations.rollback(conn, prefix, "7") == 0
    assert calibrations.active_params(conn, prefix, "7") == {}
    with pytest.raises(ValueError, match="nothing to roll back"):
        calibrations.rollback(conn, prefix, "7")
    assert calibrations.rollback(conn, prefix, "7", to=2) == 2
    with pytest.raises(ValueError, match=r"no calibration version 5 \(stored: \[1, 2\]\)"):
        calibrations.rollback(conn, prefix, "7", to=5)
    history = calibrations.history(conn, prefix, "7")
    assert [v["version"] for v in history["versions"]] == [1, 2] and history["active"] == 2
    assert json.loads(json.dumps(history)) == history  # exportable as it is


def test_project_params_put_the_calibration_over_the_projects_own(conn, prefix):
    from backend.jobqueue import queues as rq_queue

    rq_queue.save_project(conn, prefix, "3", {"label_config": "<View/>", "extra_params": {
        "presence_threshold": 0.4, "method": "gem"}}, 60)
    assert calibrations.project_params(conn, prefix, "3") == {"presence_threshold": 0.4, "method": "gem"}
    calibrations.add_version(conn, prefix, "3", {"presence_threshold": 0.75}, {})
    assert calibrations.project_params(conn, prefix, "3") == {"presence_threshold": 0.75, "method": "gem"}
    assert calibrations.project_params(conn, prefix, "3", {"logit_scale": 50}) == {
        "logit_scale": 50, "presence_threshold": 0.75}


def test_one_fit_per_project_holds_the_lock(conn, prefix):
    assert calibrations.claim(conn, prefix, "5", "job-1") is None
    assert calibrations.claim(conn, prefix, "5", "job-1") is None  # the same job again (re-run after a death)
    assert calibrations.claim(conn, prefix, "5", "job-2") == "job-1"
    assert calibrations.claim(conn, prefix, "6", "job-2") is None  # another project
    calibrations.release(conn, prefix, "5", "job-2")  # not the holder: nothing happens
    assert calibrations.holder(conn, prefix, "5") == "job-1"
    calibrations.release(conn, prefix, "5", "job-1")
    assert calibrations.holder(conn, prefix, "5") is None


def test_recalibrate_is_a_sigmoid_on_the_logit():
    from gem_engine.prelabel import recalibrate

    assert recalibrate(0.37) == 0.37  # slope 1, offset 0: untouched, bit for bit
    assert recalibrate(0.5, 2.0, 0.0) == pytest.approx(0.5)
    assert recalibrate(0.5, 1.0, float(np.log(3.0))) == pytest.approx(0.75)
    assert recalibrate(0.8, 2.0, 0.0) == pytest.approx(16 / 17)  # logit 0.8 = ln 4, doubled: ln 16
    assert 0.0 < recalibrate(0.0, 0.5, 0.0) < recalibrate(1.0, 0.5, 0.0) < 1.0  # the ends stay finite


def test_overconfident_scores_get_a_mapping_that_lowers_their_calibration_error():
    # Every scene's region is confident, but in half of them the human mask lies elsewhere (IoU 0).
    def scenes_half_wrong(seed: int, count: int) -> list[Example]:
        examples = scenes(seed, count, dict.fromkeys(LABELS, 0.01))
        for example in examples[::2]:
            [(label, mask)] = example.truth.items()
            example.truth[label] = np.roll(mask, SIDE // 2, axis=(0, 1)) & ~mask
        return examples

    train, fresh = scenes_half_wrong(7, 24), scenes_half_wrong(8, 40)
    result = fit(train, LABELS, BASE, {})
    assert result.params["score_slope"] < 1.0 or result.params["score_offset"] < 0.0  # scores pulled down
    knobs = {k: v for k, v in result.params.items() if k not in ("score_slope", "score_offset")}
    before = quality(fresh, LABELS, BASE.with_params(knobs))
    after = quality(fresh, LABELS, BASE.with_params(result.params))
    assert before.score_ece > 0.3  # about 0.5: confident, right half the time
    assert after.score_ece < before.score_ece / 3
    assert after.miou == before.miou  # scores only: the masks are the same


# ------------------------------------------------------------------------------------------------ CLI


def test_calibrate_cli_manages_versions_and_names_what_is_wrong(redis_url, conn, prefix, monkeypatch, tmp_path,
                                                                 capsys):
    from backend.cli import calibrate as cli

    monkeypatch.delenv("REDIS_URL", raising=False)
    assert cli.main(["--project", "4"]) == 2
    assert "REDIS_URL is not set" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("QUEUE_PREFIX", prefix)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert cli.main(["--project", "4", "--to", "1"]) == 2
    assert "--to goes with --rollback" in capsys.readouterr().err
    assert cli.main(["--project", "4"]) == 2
    assert "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    assert cli.main(["--project", "4", "--rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
    calibrations.add_version(conn, prefix, "4", {"presence_threshold": 0.7}, {"reason": "r"})
    assert cli.main(["--project", "4", "--status"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] == 1 and shown["versions"][0]["params"] == {"presence_threshold": 0.7}
    assert cli.main(["--project", "4", "--export", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["versions"][0]["version"] == 1
    assert cli.main(["--project", "4", "--rollback"]) == 0
    assert "no calibration is active" in capsys.readouterr().out
    assert calibrations.active_params(conn, prefix, "4") == {}
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls.invalid:8080")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token")
    calibrations.claim(conn, prefix, "4", "someone-elses-job")
    assert cli.main(["--project", "4", "--no-wait"]) == 2
    assert "already running (job someone-elses-job)" in capsys.readouterr().err


def test_a_calibration_keeps_maps_at_the_fit_size_and_its_cache_within_its_byte_budget(monkeypatch):
    from backend.calibration import job
    from gem_engine.engine import ImageAnalysis

    def analysis(side: int, labels: int = 3) -> ImageAnalysis:
        return ImageAnalysis(maps=np.random.rand(labels, side, side).astype(np.float32),
                             background_maps=np.random.rand(2, side, side).astype(np.float32),
                             label_scores=np.zeros(labels, np.float32), background_scores=np.zeros(2, np.float32),
                             logit_scale=100.0)

    assert job.fit_shape(640, 480) == (job.FIT_SIDE * 3 // 4, job.FIT_SIDE) and job.fit_shape(100, 50) == (50, 100)
    refined = analysis(448)  # PAMR's maps come at the model's input size
    small = job.at_fit_size(refined, (240, 320))
    assert small.maps.shape == (3, 240, 320) and small.background_maps.shape == (2, 240, 320)
    assert abs(float(small.maps.mean()) - float(refined.maps.mean())) < 0.01  # resized, not replaced
    grid = analysis(28)  # a patch grid is coarser than the masks: kept as it is
    assert job.at_fit_size(grid, (240, 320)) is grid

    monkeypatch.setattr(job, "_ANALYSES", type(job._ANALYSES)())
    monkeypatch.setattr(job, "CACHED_BYTES", 3 * small.maps.nbytes + 3 * small.background_maps.nbytes)
    for index in range(5):
        job._ANALYSES[index] = (small, (320, 240))
        job._evict()
    assert list(job._ANALYSES) == [2, 3, 4], "the oldest go first, the newest three fit the budget"


def test_a_calibration_holds_the_newest_annotations_within_its_byte_budget_and_counts_the_rest():
    from backend.calibration import job
    from backend.labelstudio.images import ImageError

    made = scenes(5, 6, {"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.2})
    # Annotated in this order of time: task 4 last; task 2's image no longer downloads.
    stamps = ["2026-01-03", "2026-01-01", "2026-01-06", "2026-01-02", "2026-01-09", "2026-01-05"]
    annotated = [({"id": i}, {"updated_at": stamp, "result": []}) for i, stamp in enumerate(stamps)]
    asked = []

    def example(task, annotation):
        asked.append(task["id"])
        if task["id"] == 2:
            raise ImageError("task 2: image not found")
        return made[task["id"]], (["an empty mask"] if task["id"] == 5 else []), False

    each = job.example_bytes(made[0])
    assert each == made[0].analysis.maps.nbytes + made[0].analysis.background_maps.nbytes + SIDE * SIDE
    gathered = job.gather_examples(annotated, example, max_bytes=3 * each, progress=lambda done: None)
    assert asked == [4, 2, 5, 0], "newest first, until three examples fill the budget"
    assert [e.name for e in gathered.examples] == [made[i].name for i in (0, 4, 5)], "kept in the tasks' order"
    assert gathered.left_out == 2 and gathered.skipped == {"task 2": "task 2: image not found"}
    assert gathered.problems == {"task 5": ["an empty mask"]}
    everything = job.gather_examples(annotated, example, max_bytes=10**9)
    assert len(everything.examples) == 5 and everything.left_out == 0
