"""The bulk run summary, its failure table and exit codes, the progress bar, and the Ctrl-C stop request."""

from __future__ import annotations

import io
import os
import signal

import pytest

from backend.bulk.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Failure,
    Progress,
    StopRequest,
    Summary,
)


def test_exit_codes_say_what_happened():
    assert Summary(total=3, done=3).exit_code == EXIT_OK
    assert Summary(total=3, done=2, failed=[Failure("a", "bad")]).exit_code == EXIT_FAILED
    assert Summary(total=3, done=2, pending=1).exit_code == EXIT_FAILED
    assert Summary(total=3, failed=[Failure("a", "bad")], interrupted=True).exit_code == EXIT_INTERRUPTED


def test_render_counts_and_each_failure_reason_once_with_its_count_and_items():
    summary = Summary(total=6, skipped=1, done=2, elapsed_s=3.25,
                      failed=[Failure("12", "image: local file not found:\n missing.jpg"), Failure("13", "x"),
                              Failure("14", "image: local file not found: missing.jpg")])
    lines = summary.render(what="tasks").splitlines()
    assert lines[0] == "6 tasks, pre-labeled 2, skipped 1, failed 3 in 3.2 s"
    assert lines[2].split() == ["count", "reason,", "then", "the", "tasks", "it", "hit"]
    # The same reason (whitespace folded) is one row with its count, then the items it hit.
    assert lines[3].split(None, 1) == ["2", "image: local file not found: missing.jpg"]
    assert lines[4].strip() == "tasks: 12, 14"
    assert lines[5].split(None, 1) == ["1", "x"] and lines[6].strip() == "tasks: 13"
    assert len(lines) == 7
    interrupted = Summary(total=5, done=1, pending=4, interrupted=True).render(what="images")
    assert interrupted.startswith("interrupted: ") and "unfinished 4" in interrupted
    assert "run the same command again" in interrupted
    same = Summary(failed=[Failure(str(i), "worker died") for i in range(60)]).render()
    assert same.splitlines()[3].split(None, 1) == ["60", "worker died"]
    assert same.splitlines()[4].strip() == "items: " + ", ".join(str(i) for i in range(20)) + " and 40 more"
    distinct = Summary(failed=[Failure(str(i), f"reason {i}") for i in range(60)]).render(max_rows=50)
    assert distinct.splitlines()[-1] == "... and 10 more reasons"
    assert Summary(total=2, done=2, dry_run=True).render().startswith("2 items, would pre-label 2")


def test_to_dict_is_json_ready():
    summary = Summary(total=1, failed=[Failure("a.jpg", "corrupt")], elapsed_s=1.23456)
    assert summary.to_dict() == {
        "total": 1, "skipped": 0, "done": 0, "failed": 1, "pending": 0, "interrupted": False,
        "dry_run": False, "elapsed_s": 1.235, "failures": [{"item": "a.jpg", "reason": "corrupt"}],
    }


def test_progress_bar_shows_done_failed_and_rate():
    stream = io.StringIO()
    with Progress(4, desc="pre-labeling", stream=stream) as bar:
        bar.advance(done=2)
        bar.advance(failed=1)
        bar.advance()  # nothing new: no update
    text = stream.getvalue()
    assert "pre-labeling" in text and "3/4" in text and "done=2" in text and "failed=1" in text
    assert "img/s" in text or "s/img" in text
    silent = io.StringIO()
    with Progress(4, desc="x", enabled=False, stream=silent) as bar:
        bar.advance(done=4)
    assert silent.getvalue() == "" and bar.done == 4


def test_first_ctrl_c_requests_a_stop_second_aborts(capsys):
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        assert "stopping" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous
