"""Prometheus metrics shared by every service. Labels never hold personal data."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "vroeg_events_consumed_total",
    "Events a consumer finished, by outcome (processed, duplicate, deadlettered).",
    ["topic", "outcome"],
)
EVENTS_PUBLISHED = Counter(
    "vroeg_events_published_total", "Events the outbox relay published.", ["topic"]
)
CONSUMER_RETRIES = Counter(
    "vroeg_consumer_retries_total", "Batches retried after an infrastructure error.", ["group"]
)
OUTBOX_PENDING = Gauge("vroeg_outbox_pending", "Outbox rows not yet published.")
BATCH_SECONDS = Histogram(
    "vroeg_consumer_batch_seconds", "Time to process one consumed batch.", ["group"]
)
