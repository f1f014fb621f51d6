"""The HTTP service Label Studio talks to: the FastAPI app and its routes (`app`), basic auth (`auth`), the
request body limit (`body_limit`) and Prometheus metrics (`metrics`).

It parses, enqueues, waits and formats; it never imports torch or `gem_engine` (an import contract in
`make test` checks it, and `tests/test_api.py` checks it at run time). May import the job queue (not its
worker), the Label Studio package, `backend.settings` and `backend.options`.
"""
