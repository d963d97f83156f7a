"""Which Host and Origin a request may name: the API's and the console's defence against DNS rebinding.

Without FAILURE_API_TOKEN the server listens on loopback and trusts whoever reaches it. A web page
elsewhere can still reach it: its DNS name, rebound to 127.0.0.1, makes the browser send the page's
requests here with the page's own name in ``Host``. So without a token only loopback names and the
bound address are served, and a browser request (one with ``Origin``) must come from the page it is
sent to. With a token, the token is what such a page lacks; any name is served (e.g. behind a proxy).
"""

import ipaddress
import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = "localhost, 127.0.0.0/8 or [::1]"
_HOST = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::\d{1,5})?$")


def is_loopback(host):
    """True for localhost and loopback addresses (IPv4, IPv6, IPv4-mapped IPv6)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost may resolve to anything
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def host_name(header):
    """The name in a Host header (or an Origin's netloc) without port or brackets; None when malformed."""
    match = _HOST.match(header.strip())
    if not match:
        return None
    return (match.group("v6") or match.group("name")).lower()


class Hosts:
    """The names one server answers to: ``bound_host`` is its listening address, ``token`` its API token."""

    def __init__(self, bound_host, token):
        self.bound_host = (bound_host or "").lower()
        self.any_name = token is not None

    def allows(self, name):
        return self.any_name or is_loopback(name) or (bool(self.bound_host) and name == self.bound_host)

    def host_refusal(self, header):
        """Why a request with this Host header is not served (None: it is). No Host is no browser's."""
        if header is None or self.any_name:
            return None
        name = host_name(header)
        if name is not None and self.allows(name):
            return None
        return (f"Host {header[:100]!r} is not this server's name: without FAILURE_API_TOKEN only {LOOPBACK_NAMES} "
                "are served, so a web page whose DNS name points here cannot use the API; call it by "
                "127.0.0.1, or set FAILURE_API_TOKEN to serve other names")

    def origin_refusal(self, origin, host):
        """Why a browser request from ``origin`` to ``host`` is refused (None: it is the page's own server)."""
        if origin is None:
            return None
        parts = urlsplit(origin.strip())
        same = parts.scheme in ("http", "https") and host is not None and parts.netloc.lower() == host.strip().lower()
        name = host_name(parts.netloc) if same else None
        if name is not None and self.allows(name):
            return None
        return (f"Origin {origin[:100]!r} is not this server ({(host or '')[:100]!r}): requests from other web "
                "pages are refused")
