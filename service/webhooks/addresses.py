"""Where a webhook may be sent: not into the registry's own network (SSRF). I/O: DNS.

By default a receiver whose host resolves to a loopback, private, link-local, multicast,
reserved or unspecified address (IPv4, IPv6, and IPv4 mapped into IPv6) is refused, at
creation (422) and again at each delivery. The delivery then connects to the address that
was checked, not to a second lookup of the name (the Host header and TLS SNI still name the
host, so certificates are verified against it): DNS rebinding cannot redirect it.
``MODELREG_WEBHOOKS_ALLOW_PRIVATE=true`` lifts the rule for installs whose receivers live on
the private network (and for tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddressError(ValueError):
    """The receiver resolves to an address webhooks may not reach."""


class UnresolvableError(ValueError):
    """The receiver's host does not resolve (now)."""


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect for a URL: ``url`` (its host replaced by the checked address when
    the rule applies), the ``host`` header to send and the TLS server name."""

    url: str
    host_header: str | None
    sni_hostname: str | None


async def resolve(url: str, *, allow_private: bool) -> Target:
    """The address to send ``url``'s requests to; BlockedAddressError or UnresolvableError."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allow_private:
        return Target(url, None, None)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise UnresolvableError(f"{host} does not resolve: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    blocked = [a for a in addresses if not is_public(a)]
    if blocked or not addresses:
        raise BlockedAddressError(
            f"{host} resolves to {blocked[0] if blocked else 'nothing'}, a loopback or private"
            " address webhooks may not reach (set MODELREG_WEBHOOKS_ALLOW_PRIVATE to allow)"
        )
    chosen = addresses[0]
    shown = f"[{chosen}]" if isinstance(chosen, ipaddress.IPv6Address) else str(chosen)
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(
        urlunsplit(parts._replace(netloc=netloc)),
        host_header,
        host if parts.scheme == "https" and literal is None else None,
    )
