"""The webhook receiver: verify, validate, translate, make durable, answer.

A 2xx means the command is acknowledged by Kafka (acks=all); when that cannot
be had within the deadline the answer is 503 with Retry-After, so Fanfare's
retries carry the event later and nothing acknowledged is ever lost.

Checks run cheapest first and nothing is parsed before the signature holds:
method (405), declared size (413), media type (415), body size while reading
(413), signature and timestamp (401), JSON (400), envelope (400), event data
(400). Fanfare retries every non-2xx, so each rejection costs little and
leaves no trace but a log line and a counter.

aiokafka's idempotent producer can die for good after a broker outage; the
receiver then answers 503 once and continues on a fresh producer, so the
retries land instead of failing until the process restarts.

- `app`: the aiohttp app and its routes (`build_app`).
- `webhook`: the webhook handler: read, verify, translate, produce, answer.
- `intake`: the checks before and while the body is read.
- `answers`: an answer, the refusals, and the log line of each.
- `meters`: the receiver's metric children.
- `bodies`, `openapi`: the answers' models and the OpenAPI document built
  from them and from the Fanfare models; `python -m worker.roles.receiver`
  writes it to schemas/openapi-receiver.json.
"""
