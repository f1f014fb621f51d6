"""The job queue between the HTTP service and the workers: job payloads and deterministic ids (`jobs`), RQ
queues and the Redis result store (`queues`), the worker (`worker`), the reaper of dead workers' jobs
(`reaper`) and the outbox of pushes to Label Studio (`outbox`).

Only `worker` runs the engine (through `backend.labeling`); everything else here is imported by the HTTP
service and must stay free of torch and `gem_engine`.
"""
