"""Who may call what: the service key, the admin key and the cluster token.

* the **service key** (``STREAM_APP_SERVICE_API_KEY``, sent as ``X-API-Key``): what a
  storefront holds. It places pre-orders, cancels and commits reservations and sees
  customer data (e-mail, customer id) in answers. The admin key is accepted too.
* the **admin key** (``STREAM_APP_ADMIN_API_KEY``): admin endpoints only (release,
  export, flush, reconcile); the service key is not enough.
* the **cluster token**: a request one worker forwards to another carries it in
  :data:`FORWARDED_HEADER` (or :data:`LOCAL_ONLY_HEADER`); a header without the right
  token, as a client could set, is ignored. The token is ``STREAM_APP_CLUSTER_SECRET``,
  or derived from the other secrets and the app id when that is empty (every worker of
  one app has the same settings, so the same token).

With no key configured a protected endpoint refuses everyone (401). Every comparison is
constant-time and no key is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_app.settings import Settings

KEY_HEADER = "X-API-Key"
#: set by a worker forwarding a request to the owner of its partition (value: the token)
FORWARDED_HEADER = "X-Stream-App-Forwarded"
#: asks a worker to answer an order lookup from its own books only (value: the token)
LOCAL_ONLY_HEADER = "X-Stream-App-Local-Only"


def _same(expected: bytes, given: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(expected, given.encode())


@dataclass(frozen=True)
class Credentials:
    service_key: bytes = field(repr=False)
    admin_key: bytes = field(repr=False)
    cluster_token: str = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        service = settings.service_api_key.get_secret_value().encode()
        admin = settings.admin_api_key.get_secret_value().encode()
        secret = settings.cluster_secret.get_secret_value().encode()
        if not secret:  # the same on every worker of the app: derived from shared settings
            secret = b"\0".join(
                (service, admin, settings.reservation_id_secret.get_secret_value().encode())
            )
        token = hmac.new(secret, f"forward:{settings.app_id}".encode(), hashlib.sha256).hexdigest()
        return cls(service_key=service, admin_key=admin, cluster_token=token)

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        return _same(self.admin_key, headers.get(KEY_HEADER))

    def is_service(self, headers: Mapping[str, str]) -> bool:
        """The service key or the admin key."""
        given = headers.get(KEY_HEADER)
        return _same(self.service_key, given) or _same(self.admin_key, given)

    def is_forwarded(self, headers: Mapping[str, str], header: str = FORWARDED_HEADER) -> bool:
        """Sent by a worker of this app (the header holds the cluster token)."""
        return _same(self.cluster_token.encode(), headers.get(header))

    def forwarding_headers(self, headers: Mapping[str, str], header: str = FORWARDED_HEADER
                           ) -> dict[str, str]:
        """The headers to forward a request with: the caller's (its key included, so the
        owner judges it the same way), minus hop-by-hop ones, plus the token."""
        out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        out[header] = self.cluster_token
        return out


_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade",
     FORWARDED_HEADER.lower(), LOCAL_ONLY_HEADER.lower()}
)


def open_doors(settings: Settings) -> list[str]:
    """What start-up warns about: secrets left empty and what that means."""
    warnings = []
    if not settings.reservation_id_secret.get_secret_value():
        warnings.append(
            "STREAM_APP_RESERVATION_ID_SECRET is empty: reservation ids can be derived from "
            "order ids (set it once, the same on every worker, before the first order)"
        )
    if not settings.service_api_key.get_secret_value():
        warnings.append(
            "STREAM_APP_SERVICE_API_KEY is empty: POST /pre-orders, cancel and commit refuse "
            "every caller (401)"
        )
    return warnings


def redact_customers(body: Any) -> Any:
    """``body`` without customer data (``customerEmail``, ``customerId``) at any depth:
    what a caller without the service key sees."""
    if isinstance(body, dict):
        return {k: redact_customers(v) for k, v in body.items() if k not in _CUSTOMER_FIELDS}
    if isinstance(body, list):
        return [redact_customers(v) for v in body]
    return body


_CUSTOMER_FIELDS = frozenset({"customerEmail", "customerId"})
