"""What folder mode and project mode share: the run summary and its failure table, the progress bar, Ctrl-C
handling, and the usage error."""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from backend.options import OPTIONS, ProjectOptions, spell

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


@dataclass(frozen=True)
class Failure:
    """One item (task id or image path) that could not be pre-labeled, and why."""

    item: str
    reason: str


@dataclass
class Summary:
    """Counts of one bulk run, and the failures with their reasons."""

    total: int = 0  # items found (tasks listed, images found), after --limit
    skipped: int = 0  # already done or not wanted (predicted by this version, annotated, resumed)
    done: int = 0  # pre-labeled in this run
    failed: list[Failure] = field(default_factory=list)
    pending: int = 0  # queued but not finished when the run ended (interrupted, or timed out)
    interrupted: bool = False
    dry_run: bool = False
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """Return the process exit status: 130 when interrupted, 1 when anything failed or is pending, else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.pending else EXIT_OK

    def to_dict(self) -> dict:
        """Return a JSON-ready form (for `--json` and tests)."""
        return {
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "failed": len(self.failed),
            "pending": self.pending,
            "interrupted": self.interrupted,
            "dry_run": self.dry_run,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": [{"item": f.item, "reason": f.reason} for f in self.failed],
        }

    def render(self, *, what: str = "items", max_rows: int = 50, max_items: int = 20) -> str:
        """Return the human summary: one line of counts, then the failures, each distinct reason once with its
        count and the items it hit (at most `max_rows` reasons, `max_items` items each)."""
        verb = "would pre-label" if self.dry_run else "pre-labeled"
        parts = [
            f"{self.total} {what}",
            f"{verb} {self.done}",
            f"skipped {self.skipped}",
            f"failed {len(self.failed)}",
        ]
        if self.pending:
            parts.append(f"unfinished {self.pending}")
        line = ", ".join(parts) + f" in {self.elapsed_s:.1f} s"
        if self.interrupted:
            line = "interrupted: " + line + "; run the same command again to continue"
        lines = [line]
        groups = self.failures_by_reason()
        if groups:
            lines.append("")
            lines.append(f"{'count':>5}  reason, then the {what} it hit")
            for reason, items in list(groups.items())[:max_rows]:
                lines.append(f"{len(items):>5}  {reason}")
                shown = ", ".join(items[:max_items])
                more = f" and {len(items) - max_items} more" if len(items) > max_items else ""
                lines.append(f"{'':>5}  {what}: {shown}{more}")
            if len(groups) > max_rows:
                lines.append(f"... and {len(groups) - max_rows} more reasons")
        return "\n".join(lines)

    def failures_by_reason(self) -> dict[str, list[str]]:
        """Return the failed items grouped by reason (whitespace folded to one line), most frequent first."""
        groups: dict[str, list[str]] = {}
        for failure in self.failed:
            groups.setdefault(" ".join(failure.reason.split()), []).append(failure.item)
        return dict(sorted(groups.items(), key=lambda group: -len(group[1])))


class Progress:
    """A tqdm bar counting finished items, with failures, rate and ETA; silent when disabled."""

    def __init__(self, total: int, *, desc: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="img",
            disable=not enabled,
            file=stream or sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()

    def advance(self, *, done: int = 0, failed: int = 0) -> None:
        """Count newly finished items."""
        if not done and not failed:
            return
        self.done += done
        self.failed += failed
        self._bar.set_postfix(done=self.done, failed=self.failed, refresh=False)
        self._bar.update(done + failed)

    def close(self) -> None:
        """Finish the bar's line."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StopRequest:
    """Turns the first Ctrl-C into a request to stop (checked between items); a second one aborts at once."""

    def __init__(self, *, message: str = "stopping: finishing running work (Ctrl-C again to abort)") -> None:
        self.requested = False
        self._message = message
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self._message}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C keeps its default.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False


def describe_options(options: ProjectOptions, version: str, *, extra_params: dict | None = None,
                     flags: dict | None = None) -> str:
    """Return the line saying which model settings a run uses and where they come from."""
    values = " ".join(f"{o.key}={_shown(options, o.name)}" for o in OPTIONS)
    sources = ["this shell's environment (" + ", ".join(o.env for o in OPTIONS) + ")"]
    if extra_params:
        sources.append(f"then the project's extra params set in Label Studio ({extra_params})")
    if flags:
        sources.append(f"then the flags ({flags})")
    return f"model settings: {values}; model version {version}; from {', '.join(sources)}"


def _shown(options: ProjectOptions, name: str) -> str:
    """Return an option's value as set, with the value predictions use after it when they differ ("auto(10)")."""
    given, used = getattr(options, name), options.resolved(name)
    text = spell(given) or "(none)"
    return text if used == given else f"{text}({spell(used)})"


class UsageError(ValueError):
    """The run cannot start or go on as asked (bad flag, unreadable file, unreachable service); says what to fix."""
