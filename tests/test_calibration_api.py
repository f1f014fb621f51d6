"""The API's training hooks: /train and the START_TRAINING webhook queue one fit per project, refuse a
second while one runs, say what is missing, need the webhook secret or basic auth, and a calibration in
force changes the project's model version (and a rollback changes it back)."""

from __future__ import annotations

from rq import Queue
from rq.serializers import JSONSerializer

from backend.jobqueue import calibrations
from backend.jobqueue import queues as rq_queue
from tests.test_api import CONFIG, make_settings, serve
from tests.worker_processes import listening_worker

LS = {"label_studio_url": "http://ls.invalid:8080", "label_studio_api_key": "token"}
AUTH = ("ann", "pw")


def protected(redis_url, **more):
    return make_settings(redis_url, **LS, basic_auth_user="ann", basic_auth_pass="pw", **more)


def test_train_queues_one_fit_per_project_at_the_front_and_refuses_a_second(redis_url):
    settings = protected(redis_url)
    conn = rq_queue.connect(redis_url)
    batch = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn, serializer=JSONSerializer)
    batch.enqueue_call("backend.jobqueue.worker.run_job", args=({"placeholder": True},))  # pre-labeling waits
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        started = client.post("/train", json={"project": 12}, auth=AUTH)
        assert started.status_code == 200, started.text
        job_id = started.json()["job_id"]
        assert started.json()["progress"] == "/calibration/12"
        assert batch.get_job_ids()[0] == job_id  # ahead of the pre-labeling job
        assert batch.jobs[0].args[0] == {"prefix": settings.queue_prefix, "project": "12", "min_examples": None,
                                         "page_size": 100}
        again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 12}}, auth=AUTH)
        assert again.status_code == 409 and job_id in again.json()["detail"]
        other = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 13}}, auth=AUTH)
        assert other.status_code == 200 and other.json()["status"] == "started"
        status = client.get("/calibration/12", auth=AUTH).json()
        assert status["status"]["state"] == "queued" and status["status"]["job_id"] == job_id
        assert status["active"] == 0 and status["versions"] == []
        assert client.post("/train", json={}, auth=AUTH).status_code == 400
        assert client.post("/train", json={"project": "../x"}, auth=AUTH).status_code == 400


def test_train_without_label_studio_credentials_says_what_is_missing(redis_url):
    settings = make_settings(redis_url)
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        reply = client.post("/train", json={"project": 3})
        assert reply.status_code == 400 and "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in reply.json()["detail"]
        assert client.get("/calibration/3").json()["status"] is None


def test_train_needs_the_webhook_secret_like_the_webhook(redis_url):
    settings = make_settings(redis_url, **LS, webhook_secret="s3cret")
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        assert client.post("/train", json={"project": 4}).status_code == 401
        assert client.post("/train", json={"project": 4}, headers={"X-Webhook-Secret": "wrong"}).status_code == 401
        assert client.post("/train", json={"project": 4}, headers={"X-Webhook-Secret": "s3cret"}).status_code == 200


def test_a_calibration_in_force_changes_the_model_version_and_a_rollback_restores_it(redis_url):
    settings = protected(redis_url)
    conn = rq_queue.connect(redis_url)
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        body = {"project": 21, "schema": CONFIG, "extra_params": {"presence_threshold": 0.4}}
        plain = client.post("/setup", json=body, auth=AUTH).json()["model_version"]
        calibrations.add_version(conn, settings.queue_prefix, "21", {"presence_threshold": 0.8}, {"reason": "test"})
        calibrated = client.post("/setup", json=body, auth=AUTH).json()["model_version"]
        assert calibrated != plain
        predicted = client.post("/predict", json={"project": 21, "tasks": [], "label_config": CONFIG}, auth=AUTH)
        assert predicted.json()["model_version"] == calibrated
        # The calibration's params are an extra param's values: the same version as setting them by hand.
        by_hand = client.post("/setup", json={**body, "project": 22, "extra_params": {"presence_threshold": 0.8}},
                              auth=AUTH).json()["model_version"]
        assert by_hand == calibrated
        calibrations.rollback(conn, settings.queue_prefix, "21")
        assert client.post("/predict", json={"project": 21, "tasks": [], "label_config": CONFIG},
                           auth=AUTH).json()["model_version"] == plain


def test_evaluate_queues_a_report_job_and_the_report_route_says_what_it_has(redis_url):
    settings = protected(redis_url)
    conn = rq_queue.connect(redis_url)
    batch = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn, serializer=JSONSerializer)
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        missing = client.get("/evaluation/31", auth=AUTH)
        assert missing.status_code == 404 and "POST /evaluate" in missing.json()["detail"]
        started = client.post("/evaluate", json={"project": 31, "model_version": "v1"}, auth=AUTH)
        assert started.status_code == 200 and started.json()["report"] == "/evaluation/31"
        [job] = batch.jobs
        assert job.func_name == "backend.evaluation.job.run" and job.args[0]["model_version"] == "v1"
        assert client.get("/evaluation/31", auth=AUTH).json()["state"] == "queued"
        assert client.post("/evaluate", json={"project": 31, "model_version": 5}, auth=AUTH).status_code == 400
    bare = make_settings(redis_url)
    with listening_worker(redis_url, bare.queue_prefix), serve(bare) as client:
        reply = client.post("/evaluate", json={"project": 31})
        assert reply.status_code == 400 and "LABEL_STUDIO_URL" in reply.json()["detail"]
