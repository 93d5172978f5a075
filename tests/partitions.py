"""Where Kafka's default partitioner puts a key, so a test that needs data
on every partition chooses its keys instead of hoping random ids spread."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_of(key: str, partitions: int) -> int:
    """The partition aiokafka's DefaultPartitioner (and the Java client's)
    picks for `key` on a topic of `partitions` partitions numbered 0..n-1."""
    return (int(murmur2(key.encode("utf-8"))) & 0x7FFFFFFF) % partitions


def key_per_partition(prefix: str, partitions: int) -> list[str]:
    """`partitions` keys starting with `prefix`, the i-th landing on
    partition i: `prefix-0`, `prefix-1`, ... until every partition has one.
    The same prefix always gives the same keys."""
    found: dict[int, str] = {}
    # murmur2 spreads evenly: a dozen candidates per partition is plenty,
    # and the bound turns a broken hash into an error, not a hang.
    for n in range(1000 * partitions):
        key = f"{prefix}-{n}"
        found.setdefault(partition_of(key, partitions), key)
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError(
        f"no key with prefix {prefix!r} for partitions {set(range(partitions)) - set(found)}"
    )
