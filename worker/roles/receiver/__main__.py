"""`python -m worker.roles.receiver` refreshes schemas/openapi-receiver.json."""

from worker.roles.receiver.openapi import write_openapi

write_openapi()
