"""Job ids, per-project options and the model version string."""

from __future__ import annotations

import pytest

from backend.jobqueue.jobs import TaskJobs, image_url_of, job_id, make_payload, project_id
from backend.labelstudio.label_config import parse_label_config
from backend.options import OptionsError, ProjectOptions, model_version
from backend.settings import Settings

SETTINGS = Settings.from_env({})


def _id(**changes):
    base = dict(prefix="p", project="3", task_id=7, version="v1", config_hash="abc", image_url="http://x/1.png")
    return job_id(**{**base, **changes})


def test_job_id_is_deterministic_and_sensitive_to_every_part():
    assert _id() == _id()
    others = {_id(project="4"), _id(task_id=8), _id(version="v2"), _id(config_hash="abd"),
              _id(image_url="http://x/2.png"), _id(prefix="q"), _id(context={"result": [1]})}
    assert _id() not in others and len(others) == 7
    assert _id().startswith("p-")


def test_options_from_extra_params():
    options = ProjectOptions.from_settings(SETTINGS, {"method": "gradcam", "min_area": "0.01", "model": "ViT-B-32",
                                                      "outputs": ["polygon"]})
    assert options.method == "gradcam" and options.min_area == 0.01 and options.model_name == "ViT-B-32"
    assert options.outputs == ("polygon",)
    assert ProjectOptions.from_dict(options.to_dict()) == options


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "sam"}, "method must be"),
        ({"colour": "red"}, "unknown extra params"),
        ({"threshold": "high"}, "threshold must be"),
        ({"threshold": "1.5"}, r"threshold must be in \[0, 1\]"),
        ({"min_area": "big"}, "wrong type"),
        ({"outputs": "masks"}, "outputs"),
        ({"outputs": ""}, "at least one"),
    ],
)
def test_bad_options_are_named(params, message):
    with pytest.raises(OptionsError, match=message):
        ProjectOptions.from_settings(SETTINGS, params)


def test_model_version_is_stable_and_tracks_what_changes_predictions():
    base = ProjectOptions.from_settings(SETTINGS)
    assert model_version(base) == model_version(ProjectOptions.from_settings(Settings.from_env({})))
    assert model_version(base).startswith("gem-labeler-gem-ViT-B-16-openai-")
    assert model_version(base.with_params({"threshold": "0.4"})) != model_version(base)
    assert model_version(base.with_params({"method": "gradcam"})) != model_version(base)
    local = ProjectOptions.from_settings(Settings.from_env({"MODEL_PRETRAINED": "/weights/a/tiny.pt"}))
    assert "-tiny.pt-" in model_version(local, {"/weights/a/tiny.pt": "abc"})


def test_project_ids_and_image_urls():
    assert project_id("12.1700000000") == "12" and project_id(5) == "5" and project_id({"id": 9}) == "9"
    assert project_id(None) == ""
    # A project id becomes part of Redis keys: only a bounded plain word.
    for bad in ("a:b", "1 2", "x" * 65, "../x", {"id": "p*"}):
        with pytest.raises(ValueError, match="not a plain id"):
            project_id(bad)
    vocab = parse_label_config('<View><Image name="i" value="$pic"/><BrushLabels name="b" toName="i">'
                               '<Label value="a"/></BrushLabels></View>')
    assert image_url_of({"data": {"pic": " http://x/a.png "}}, vocab) == "http://x/a.png"
    for task, message in [({}, "task has no 'data' object"), ({"data": {}}, "task data has no image under 'pic'"),
                          ("x", "task is not a JSON object"), ({"data": {"pic": "  "}}, "task data has no image under 'pic'")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            image_url_of(task, vocab)


def test_project_id_edges():
    assert project_id("") == "" and project_id({"id": ""}) == "" and project_id({}) == ""
    # Only the first dot splits (Label Studio's "<id>.<timestamp>"); what follows is never part of the id.
    assert project_id("12.5.3") == "12" and project_id(12.0) == "12"
    # The error quotes at most 80 characters of a bad id.
    with pytest.raises(ValueError, match=rf"^project id '{'a' * 80}' is not a plain id"):
        project_id("a" * 100)


def test_job_id_shape_and_context_key_order():
    ident = _id(context={"b": 1, "a": [2]})
    assert ident == _id(context={"a": [2], "b": 1})  # the same context, whatever its key order
    assert len(ident) == len("p-") + 32 and all(c in "0123456789abcdef" for c in ident[2:])


def test_task_jobs_names_and_builds_payloads_like_the_module_functions():
    vocab = parse_label_config('<View><Image name="i" value="$pic"/><BrushLabels name="b" toName="i">'
                               '<Label value="a"/></BrushLabels></View>')
    options = ProjectOptions.from_settings(SETTINGS, {"method": "gradcam"})
    jobs = TaskJobs(prefix="p", project="3", vocabulary=vocab, options=options)
    assert jobs.version == model_version(options) and jobs.config_hash == vocab.config_hash()
    task = {"id": 7, "data": {"pic": "http://x/1.png"}}
    context = {"result": [{"type": "keypointlabels"}]}
    ident = jobs.job_id(task, "http://x/1.png", context)
    assert ident == job_id(prefix="p", project="3", task_id=7, version=model_version(options),
                           config_hash=vocab.config_hash(), image_url="http://x/1.png", context=context)
    assert jobs.job_id(task, "http://x/1.png") != ident
    expected = {"job_id": ident, "prefix": "p", "project": "3", "task_id": 7, "image_url": "http://x/1.png",
                "vocabulary": vocab.to_dict(), "options": options.to_dict(), "model_version": model_version(options),
                "context": context}
    assert jobs.payload(ident, task, "http://x/1.png", context) == expected
    assert make_payload(job=ident, prefix="p", project="3", task=task, image_url="http://x/1.png",
                        vocabulary=vocab, options=options, version=model_version(options), context=context) == expected
    assert jobs.payload(ident, {}, "u")["task_id"] is None and jobs.payload(ident, {}, "u")["context"] is None


def test_task_jobs_share_one_vocabulary_and_options_dict_across_payloads():
    """A bulk run makes thousands of payloads: their vocabulary and options are made once, not per task."""
    vocab = parse_label_config('<View><Image name="i" value="$pic"/><BrushLabels name="b" toName="i">'
                               '<Label value="a"/></BrushLabels></View>')
    jobs = TaskJobs(prefix="p", project="3", vocabulary=vocab, options=ProjectOptions.from_settings(SETTINGS))
    first, second = jobs.payload("p-1", {"id": 1}, "u1"), jobs.payload("p-2", {"id": 2}, "u2")
    assert first["vocabulary"] is second["vocabulary"] and first["options"] is second["options"]
