"""Bulk pre-labeling behind `gem-labeler prelabel`: a Label Studio project through the job queue (`project`),
a folder of images through the worker pipeline in this process (`folder`), and what both share (`common`).

May import the job queue, `backend.labeling` (and so the engine), the Label Studio package, settings and
options; never the HTTP service. The command line itself is `backend.cli.prelabel`.
"""
