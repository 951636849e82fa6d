"""The identity provider's signing keys: from a JWKS file, a JWKS URL, or the URL its
discovery document names (``<issuer>/.well-known/openid-configuration``). I/O: HTTP, files.

Keys are cached for ``cache_seconds``. A token signed with a key id the cache does not hold
(the provider rotated its keys) fetches the set again at once, but at most once per
``REFETCH_FLOOR`` seconds, so a flood of tokens with made-up key ids cannot turn the
registry into a load generator against the provider. When a fetch fails, the keys held
keep serving; with none held, sign-in answers 503 until the provider is back.

Only asymmetric public keys are kept (RSA, EC, OKP): a symmetric ``oct`` key in a published
set would let anyone who can read the set sign tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

log = logging.getLogger(__name__)

REFETCH_FLOOR = 10.0
HTTP_TIMEOUT = 5.0
ASYMMETRIC = frozenset({"RSA", "EC", "OKP"})


class IdentityProviderUnavailableError(Exception):
    """The provider's keys cannot be had, and none are held: retry later (503)."""


class JwksSource:
    def __init__(
        self,
        *,
        issuer: str,
        url: str | None,
        file: Path | None,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.url = url
        self.file = file
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def keys(self, kid: str | None) -> KeySet:
        if self._stale(kid):
            async with self._lock:
                if self._stale(kid):  # another request may have fetched meanwhile
                    await self._refresh()
        if self._keys is None:
            raise IdentityProviderUnavailableError(
                "the identity provider's signing keys cannot be fetched; retry later"
            )
        return self._keys

    def _stale(self, kid: str | None) -> bool:
        age = self.clock() - self._fetched
        if age >= self.cache_seconds:
            return True
        if age < min(REFETCH_FLOOR, self.cache_seconds):
            return False
        return self._keys is None or (kid is not None and kid not in self._kids)

    async def _refresh(self) -> None:
        self._fetched = self.clock()
        try:
            document = await self._document()
            listed = document.get("keys", [])
            keys = [k for k in listed if isinstance(k, dict) and k.get("kty") in ASYMMETRIC]
            # Public halves only: a private part has no business in a published set.
            public = KeySet.import_key_set({"keys": keys}).as_dict(private=False)
            key_set = KeySet.import_key_set(public)
        except (OSError, httpx.HTTPError, ValueError, JoseError, KeyError, TypeError) as exc:
            log.warning("identity provider keys not refreshed (%s): %s", type(exc).__name__, exc)
            return
        self._keys = key_set
        self._kids = frozenset(str(k.kid) for k in key_set.keys if k.kid)

    async def _document(self) -> dict[str, Any]:
        if self.file is not None:
            text = await asyncio.to_thread(self.file.read_text)
            loaded: dict[str, Any] = json.loads(text)
            return loaded
        # A client per fetch: fetches are minutes apart, and nothing is left to close.
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
            url = self.url or await self._discovered_jwks_url(http)
            answer = await http.get(url)
            answer.raise_for_status()
            found: dict[str, Any] = answer.json()
            return found

    async def _discovered_jwks_url(self, http: httpx.AsyncClient) -> str:
        answer = await http.get(f"{self.issuer}/.well-known/openid-configuration")
        answer.raise_for_status()
        document = answer.json()
        if document.get("issuer", "").rstrip("/") != self.issuer:
            raise ValueError(f"the discovery document names issuer {document.get('issuer')!r}")
        url: str = document["jwks_uri"]
        return url
