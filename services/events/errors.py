"""The events domain's errors (each carries its HTTP status and code, as services/errors.py says)."""

from __future__ import annotations

from services.errors import BadInput, Conflict, NotFound


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class DeliveryInFlight(Conflict):
    """A dispatcher is sending this delivery right now: wait for its outcome before redelivering."""

    code = "delivery_in_flight"


class BadSecret(BadInput):
    code = "bad_secret"
