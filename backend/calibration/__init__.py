"""Per-project calibration: fit the product's thresholds to a project's own annotations, adopt only what
held-out tasks confirm, keep every version (`backend.jobqueue.calibrations` stores them)."""
