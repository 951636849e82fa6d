"""A small OpenID provider for the tests, run as its own process: the discovery document,
the JWKS, and (for tests only) endpoints to mint signed tokens with any claims and to rotate
its keys. Built with the same library the registry validates with (joserfc).

    python -m tests.support.oidc_provider        # prints "port <n>", serves until killed

    GET  /.well-known/openid-configuration   issuer, jwks_uri (as a provider publishes them)
    GET  /jwks.json                          the public keys currently published
    POST /mint    {"claims": {...}, "alg": "RS256"|"ES256", "kid": optional}  -> {"token"}
    POST /rotate  {"keep_old": bool}         a new signing key of each type -> {"kids"}
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey


class Keys:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.published: list[RSAKey | ECKey] = []
        self.current: dict[str, RSAKey | ECKey] = {}
        self.rotate(keep_old=False)

    def rotate(self, *, keep_old: bool) -> list[str]:
        with self.lock:
            self.generation += 1
            rsa = RSAKey.generate_key(
                2048, parameters={"kid": f"rsa-{self.generation}", "use": "sig"}
            )
            ec = ECKey.generate_key(
                "P-256", parameters={"kid": f"ec-{self.generation}", "use": "sig"}
            )
            self.current = {"RS256": rsa, "ES256": ec}
            self.published = [rsa, ec, *(self.published if keep_old else [])]
            return [str(rsa.kid), str(ec.kid)]

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            public = KeySet(list(self.published)).as_dict(private=False)
            return dict(public)

    def mint(self, claims: dict[str, Any], alg: str, kid: str | None) -> str:
        with self.lock:
            key = self.current[alg]
            if kid is not None:
                known = {str(k.kid): k for k in self.published}
                key = known.get(kid) or RSAKey.generate_key(2048, parameters={"kid": kid})
            return jwt.encode({"alg": alg, "kid": str(key.kid)}, claims, key, algorithms=[alg])


def port_of(server: Any) -> int:
    bound: int = server.server_address[1]
    return bound


def serve(port: int = 0) -> None:
    keys = Keys()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def answer(self, body: dict[str, Any], status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            issuer = f"http://127.0.0.1:{port_of(self.server)}"
            if self.path == "/.well-known/openid-configuration":
                self.answer(
                    {
                        "issuer": issuer,
                        "jwks_uri": f"{issuer}/jwks.json",
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                    }
                )
            elif self.path == "/jwks.json":
                self.answer(keys.jwks())
            else:
                self.answer({"error": "not_found"}, 404)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/mint":
                token = keys.mint(body["claims"], body.get("alg", "RS256"), body.get("kid"))
                self.answer({"token": token})
            elif self.path == "/rotate":
                self.answer({"kids": keys.rotate(keep_old=bool(body.get("keep_old")))})
            else:
                self.answer({"error": "not_found"}, 404)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


@dataclass
class OidcProvider:
    url: str  # also the issuer
    process: subprocess.Popen[str]

    def mint(self, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
        answer = httpx.post(f"{self.url}/mint", json={"claims": claims, "alg": alg, "kid": kid})
        answer.raise_for_status()
        token: str = answer.json()["token"]
        return token

    def rotate(self, *, keep_old: bool) -> list[str]:
        answer = httpx.post(f"{self.url}/rotate", json={"keep_old": keep_old})
        answer.raise_for_status()
        kids: list[str] = answer.json()["kids"]
        return kids

    def jwks(self) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{self.url}/jwks.json").json()
        return found


@contextlib.contextmanager
def oidc_provider() -> Iterator[OidcProvider]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.oidc_provider"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"the OIDC provider did not start: {line!r}")
        yield OidcProvider(f"http://127.0.0.1:{int(line.split()[1])}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    serve()
