"""Pre-label quality against human masks: `gem-labeler evaluate`.

Pipeline: a source (a folder of images with PNG masks run through the folder pipeline, or a Label Studio
project's annotated tasks with their predictions) -> `annotations` decodes both sides' Label Studio results
to per-label masks -> `metrics` accumulates the figures image by image -> `report` writes the table, JSON
and PNG.
"""
