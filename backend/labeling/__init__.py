"""From an image to what a person reviews: the worker pipeline (engine -> regions -> Label Studio results),
the prediction JSON builders and overlay PNGs.

Runs in workers, in bulk folder mode and in the heatmap command. May import `gem_engine` (with torch), the
Label Studio package, `backend.settings` and `backend.options`; never the job queue or the HTTP service.
"""
