"""What comes from Label Studio: label configs parsed into vocabularies, task images, and its REST API.

May import: `backend.settings`, `backend.options`, httpx, PIL, label-studio-sdk. Never torch or `gem_engine`:
the HTTP service stands on this package.
"""
