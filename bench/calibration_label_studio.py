"""Calibration through a real Label Studio: the K-curve of bench/calibration_curve.py, fitted the way a team fits it.

For each K and draw: a Label Studio project with the fixed 36-label vocabulary (BrushLabels), K fixture scenes
imported with their ground truth as annotations (brush RLE, as annotators' masks are stored), the product
(`gem-labeler serve`: API plus one worker, the trained tiny CLIP of bench/localization.py, every option at
its default) connected as the project's ML backend; then "Start Training" through Label Studio's API. The
worker fetches the annotations and images from Label Studio, fits and adopts or refuses; the bench reads the
calibration in force from `GET /calibration/{project}` and scores those params on the held-out scenes of
bench/calibration_curve.py (the product's own presence -> regions path), beside the default, all-background
and the same fit run in process on the same K scenes (the curve's own figure: the two should agree).

The draws are calibration_curve.py's (K scenes of its training seed, `--repeats` disjoint draws), so the
rows compare one to one. Label Studio 1.23.2 is installed into the e2e tests' cached environment on first
use (from the package registry), and runs on loopback with a fresh database.

    .venv/bin/python bench/calibration_label_studio.py [--held-out 200] [--ks 10,25,50] [--repeats 3]

Prints a table and, last, the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.calibration.fit import Example, fit, quality  # noqa: E402
from backend.options import ProjectOptions  # noqa: E402
from bench import localization  # noqa: E402
from bench.calibration_curve import TRAINING_SEED, examples  # noqa: E402
from bench.localization import HELD_OUT_SEED  # noqa: E402
from bench.prelabel_quality import VOCABULARIES  # noqa: E402
from tests import scenes  # noqa: E402
from tests.e2e import harness  # noqa: E402
from tests.e2e.checks import brush_result  # noqa: E402
from tests.e2e.ls_rest import LabelStudioREST, wait_for  # noqa: E402

VOCABULARY = "full-36"
FIT_TIMEOUT_S = 1800


def label_config(labels: list[str]) -> str:
    """Return a brush labeling config naming every label of the vocabulary."""
    return ('<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image">'
            + "".join(f'<Label value="{label}"/>' for label in labels) + "</BrushLabels></View>")


def annotated_tasks(items: list[scenes.Scene], truths: list[Example], folder: Path, url_folder: str) -> list[dict]:
    """Save the scenes' images and return Label Studio tasks annotated with their truth, one brush per label."""
    tasks = []
    for index, (scene, example) in enumerate(zip(items, truths, strict=True)):
        scene.image.save(folder / f"scene-{index}.png")
        tasks.append({"data": {"image": f"/data/local-files/?d={url_folder}/scene-{index}.png"},
                      "annotations": [{"result": [brush_result(label, m) for label, m in example.truth.items()]}]})
    return tasks


def calibrate_in_label_studio(rest: LabelStudioREST, label_studio: harness.LabelStudio, backend: harness.Backend,
                              items: list[scenes.Scene], truths: list[Example], labels: list[str], title: str) -> dict:
    """Return the finished fit's status and the params in force after "Start Training" on a new project."""
    folder = f"calibration-{uuid.uuid4().hex[:8]}"
    (label_studio.files_root / folder).mkdir()
    project = rest.create_project(title, label_config(labels))
    rest.import_tasks(project["id"], annotated_tasks(items, truths, label_studio.files_root / folder, folder))
    record = rest.connect_ml_backend(project["id"], backend.url, basic_auth=backend.basic_auth)
    rest.call("POST", f"/api/ml/{record['id']}/train", json={}, expect=(200, 201))

    def finished():
        state = httpx.get(f"{backend.url}/calibration/{project['id']}", auth=backend.basic_auth, timeout=30).json()
        status = state["status"] or {}
        return state if status.get("state") in ("done", "failed", "refused") else None

    state = wait_for(finished, timeout_s=FIT_TIMEOUT_S, interval_s=1, what=f"the calibration of {title}")
    params = next((v["params"] for v in state["versions"] if v["version"] == state["active"]), {})
    return {"status": state["status"], "params": params}


def start_services(workdir: Path, redis_url: str) -> tuple[harness.LabelStudio, harness.Backend]:
    """Start Label Studio and the product (trained fixture model, defaults, protected like a deployment)."""
    label_studio = harness.start_label_studio(harness.ensure_label_studio(), workdir / "label-studio")
    with LabelStudioREST(label_studio.url, token=label_studio.legacy_token) as rest:
        label_studio.personal_access_token = rest.call("POST", "/api/token/")["token"]
    env = {"MODEL_NAME": localization.MODEL_NAME, "MODEL_CONFIG": str(localization.CONFIG),
           "MODEL_PRETRAINED": str(localization.WEIGHTS), "DEVICE": "cpu", "REDIS_URL": redis_url,
           "QUEUE_PREFIX": f"bench-calibration-{uuid.uuid4().hex[:8]}", "RESULT_TTL_S": "3600",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.personal_access_token,
           "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root), **harness.secure_env()}
    try:
        backend = harness.start_backend(env, workdir / "backend", repo_root=ROOT)
    except BaseException:
        label_studio.stop()
        raise
    return label_studio, backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=200, help="held-out scenes (default 200)")
    parser.add_argument("--ks", default="10,25,50", help="annotated images per fit (default 10,25,50)")
    parser.add_argument("--repeats", type=int, default=3, help="disjoint draws of annotated scenes per K")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis for the product's queues (its own key prefix; nothing is flushed)")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    labels = VOCABULARIES[VOCABULARY][0]
    base = ProjectOptions()
    background = tuple(base.background_prompts)
    pamr = base.resolved("pamr_iterations")  # as the worker's default computes its maps
    held_out = examples(VOCABULARY, HELD_OUT_SEED, args.held_out, background, pamr)
    items = list(scenes.scenes(TRAINING_SEED, max(ks) * args.repeats))
    pool = examples(VOCABULARY, TRAINING_SEED, max(ks) * args.repeats, background, pamr)
    default = quality(held_out, labels, base)
    nothing = quality(held_out, labels, base.with_params({"presence_threshold": 1.0, "presence": "image"}))
    figures: dict[str, object] = {"vocabulary": VOCABULARY, "labels": len(labels), "held_out": args.held_out,
                                  "ks": ks, "repeats": args.repeats, "default": default.to_dict(),
                                  "all_background": nothing.to_dict(), "curve": []}
    lines = ["| K | draw | adopted (Label Studio) | held-out mIoU, Label Studio fit (x default) | "
             "held-out mIoU, in-process fit (x default) | same params | presence F1 | score ECE | fit s |",
             "|" + " --- |" * 9]
    with tempfile.TemporaryDirectory(prefix="calibration-ls-") as tmp:
        label_studio, backend = start_services(Path(tmp), args.redis_url)
        try:
            with LabelStudioREST(label_studio.url, token=label_studio.legacy_token) as rest:
                for k in ks:
                    for r in range(args.repeats):
                        started = time.perf_counter()
                        draw = slice(r * k, (r + 1) * k)
                        got = calibrate_in_label_studio(rest, label_studio, backend, items[draw], pool[draw],
                                                        labels, f"K={k} draw {r}")
                        seconds = time.perf_counter() - started
                        via_ls = quality(held_out, labels, base.with_params(got["params"]))
                        local = fit(pool[draw], labels, base, {})
                        in_process = quality(held_out, labels, base.with_params(local.params if local.adopted else {}))
                        adopted = bool(got["params"])
                        # The worker decoded Label Studio's brushes and fetched the images itself: the same
                        # params as the in-process fit on the fixture's own masks say the path loses nothing.
                        same = got["params"] == (local.params if local.adopted else {})
                        print(f"K={k} draw {r}: Label Studio fit {got['status'].get('state')}, "
                              f"{(got['status'].get('report') or {}).get('reason')}; params {got['params']}",
                              flush=True)
                        ece = "-" if via_ls.score_ece is None else f"{via_ls.score_ece:.3f}"
                        lines.append(f"| {k} | {r} | {'yes' if adopted else 'no'} | {via_ls.miou:.3f} "
                                     f"({via_ls.miou / default.miou:.2f}x) | {in_process.miou:.3f} "
                                     f"({in_process.miou / default.miou:.2f}x) | {'yes' if same else 'no'} | "
                                     f"{via_ls.presence_f1:.3f} | {ece} | "
                                     f"{seconds:.0f} |")
                        figures["curve"].append({"k": k, "draw": r, "adopted": adopted, "params": got["params"],
                                                 "miou": via_ls.miou, "ratio": via_ls.miou / default.miou,
                                                 "in_process_miou": in_process.miou, "same_params": same,
                                                 "presence_f1": via_ls.presence_f1, "score_ece": via_ls.score_ece,
                                                 "seconds": seconds})
        finally:
            backend.stop()
            label_studio.stop()
    for k in ks:
        rows = [c for c in figures["curve"] if c["k"] == k]
        figures[f"k{k}_mean_ratio"] = float(np.mean([c["ratio"] for c in rows]))
        figures[f"k{k}_worst_ratio"] = float(min(c["ratio"] for c in rows))
    print(f"default (uncalibrated) held-out mIoU {default.miou:.3f}; all-background {nothing.miou:.3f} "
          f"({nothing.miou / default.miou:.2f}x)")
    print("\n".join(lines))
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
