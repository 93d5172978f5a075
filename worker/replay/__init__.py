"""Operating on the logs: rebuild state from the events topic (`replay`),
with its command line in `worker.tools.replay`; deciding the command log
again and dead letters are `worker.tools.reprocess` and `worker.tools.dlq`.
The fold itself is pure: worker.replay.fold."""
