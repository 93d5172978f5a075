"""Kafka consumer-group membership: a static member leaves the group on a
clean stop (LeaveGroup v3, KIP-345), which aiokafka cannot send itself."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

from worker.adapters.kafka import admin_client
from worker.config import Settings
from worker.logs import get_logger

log = get_logger(__name__)


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _StaticLeave(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    """LeaveGroup v3 (KIP-345) naming a static member by its instance id,
    as Kafka's admin "remove members from consumer group" sends it; aiokafka
    only speaks v0-v1, which cannot name a static member."""

    API_KEY = 13

    def __init__(self, group: str, instance_id: str) -> None:
        self.group = group
        self.instance_id = instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        # An unknown member id: the broker finds the member by instance id.
        return request_struct_class(self.group, [("", self.instance_id)])


async def leave_group_static(settings: Settings, timeout: float = 5.0) -> bool:
    """Take this process's static member out of the group now, after its
    consumer stopped: Kafka keeps a static member that closes (the point of
    static membership), so without this its partitions would wait a whole
    session timeout after every clean stop, and a Deployment's replacement
    pod has another name and never reclaims them. True if the broker removed it."""
    instance_id = settings.consumer_instance_id
    if instance_id is None:
        return False  # aiokafka sent LeaveGroup itself for a dynamic member
    admin = admin_client(settings)
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            node = await admin.find_coordinator(settings.consumer_group)
            response = await admin._send_request_to_node(
                node, _StaticLeave(settings.consumer_group, instance_id)
            )
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("group_leave_failed", instance_id=instance_id, error=type(exc).__name__)
        return False
    finally:
        await admin.close()
    codes = [response.error_code, *(m[2] for m in response.members)]
    if any(codes):
        # UNKNOWN_MEMBER_ID (25): already gone (its session ran out).
        log.warning("group_leave_refused", instance_id=instance_id, error_codes=codes)
        return False
    log.info("group_left", instance_id=instance_id)
    return True
