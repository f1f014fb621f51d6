"""The Label Studio side of gem-labeler, in packages named for what they hold.

Each imports only the ones below it: `cli` > `bulk` | `service` (not each other) > `jobqueue` > `labeling`
> `labelstudio` > `settings` > `options`. Only `labeling`, the job queue's worker, `bulk` and `cli` reach
the engine (`gem_engine`, torch). import-linter checks this in `make test` (pyproject.toml).
"""
