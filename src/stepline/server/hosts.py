"""Which hosts ``stepline dev`` answers, and which pages may write to it.

A dev server has no credentials, so two browser attacks matter: DNS rebinding (a
page on ``evil.example`` whose name then resolves to 127.0.0.1 reads and writes the
API as its own origin; the ``Host`` header still says ``evil.example``) and
cross-site writes (a form or ``fetch`` on any page POSTs to 127.0.0.1). As Vite,
Jupyter and webpack-dev-server do, the server answers only local names and refuses
writes whose ``Origin`` is a page elsewhere. Programs (SDK apps, curl, the CLI) send
no ``Origin`` and are unaffected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def split_host(value: str) -> str:
    """The host name of a ``Host`` header (``name:port``, ``[v6]:port``), lower case, no trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, _ = value[1:].partition("]")
    elif value.count(":") > 1:  # a bare IPv6 address (a bind address; never valid in Host)
        name = value
    else:
        name, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            name = value
    return name.rstrip(".")


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class LocalHosts:
    """Loopback addresses, ``localhost``, ``*.localhost``, plus ``extra`` names
    (a name starting with ``.`` also takes its subdomains)."""

    extra: tuple[str, ...] = ()

    @classmethod
    def parse(cls, bind_host: str, allowed: str) -> LocalHosts:
        names = [split_host(n) if not n.strip().startswith(".") else n.strip().lower() for n in allowed.split(",")]
        return cls(tuple(n for n in (split_host(bind_host), *names) if n))

    def allows(self, name: str) -> bool:
        if is_loopback(name):
            return True
        return any(name == e or (e.startswith(".") and (name.endswith(e) or name == e[1:])) for e in self.extra)

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why a request with this ``Host`` is refused, or None. No header (HTTP/1.0 tools) is
        let through: browsers always send one, and they are what rebinding needs."""
        if host_header is None or self.allows(split_host(host_header)):
            return None
        return (
            f"Host {host_header!r} is not a local name, so stepline dev does not answer it (a guard "
            "against DNS rebinding); use 127.0.0.1 or localhost, or add the name to STEPLINE_ALLOWED_HOSTS"
        )

    def origin_refusal(self, method: str, origin: str | None, fetch_site: str | None) -> str | None:
        """Why a write from this page is refused, or None."""
        if method not in WRITE_METHODS:
            return None
        if origin is None:
            if fetch_site == "cross-site":
                return "a cross-site write (Sec-Fetch-Site: cross-site) is refused by stepline dev"
            return None
        try:
            name = urlsplit(origin).hostname if origin != "null" else None
        except ValueError:  # not a URL (an unclosed IPv6 bracket): no page of ours
            name = None
        if name is not None and self.allows(name.rstrip(".")):
            return None
        return (
            f"a write from the page at {origin!r} is refused: stepline dev takes writes only from "
            "programs and from pages on loopback addresses, localhost or STEPLINE_ALLOWED_HOSTS"
        )
