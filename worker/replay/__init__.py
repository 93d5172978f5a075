"""Operating on the logs: rebuild state from the events topic (`replay`),
decide the command log again (`worker.reprocess`), and dead letters
(`worker.dlq`). The fold itself is pure: worker.replay.fold."""
