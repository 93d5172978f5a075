"""tests/partitions.py agrees with aiokafka's own partitioner, which is what
every producer of the service and of the tests uses."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.partitions import key_per_partition, partition_of


@pytest.mark.parametrize("partitions", [1, 2, 3, 6, 12, 13])
def test_partition_of_is_aiokafkas_default_partitioner(partitions: int) -> None:
    everyone = list(range(partitions))
    keys = [f"queue_{n}" for n in range(500)] + ["", "é-ü", "x" * 300, "exp-short"]
    for key in keys:
        # `available` is ignored for a keyed record; empty proves it.
        expected = DefaultPartitioner()(key.encode("utf-8"), everyone, [])
        assert partition_of(key, partitions) == expected, key


@pytest.mark.parametrize("partitions", [1, 6, 12])
def test_key_per_partition_covers_every_partition_once(partitions: int) -> None:
    keys = key_per_partition("queue_ab12", partitions)
    assert len(set(keys)) == partitions
    assert [partition_of(k, partitions) for k in keys] == list(range(partitions))
    assert all(k.startswith("queue_ab12-") for k in keys)
    assert key_per_partition("queue_ab12", partitions) == keys
