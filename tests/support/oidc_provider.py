"""A small OpenID provider for the tests, run as its own process: the discovery document,
the JWKS, the authorization code flow with PKCE (S256 only, as a careful provider insists),
the device authorization grant (RFC 8628) with its verification page, refresh tokens, and
(for tests only) endpoints to mint signed tokens with any claims, to rotate its keys and to
script a device code's next answers. Built with the same library the registry validates
with (joserfc). Any client id is accepted; tokens name it as their audience.

    python -m tests.support.oidc_provider [interval]   # prints "port <n>", serves until killed

    GET  /.well-known/openid-configuration   issuer, endpoints (as a provider publishes them)
    GET  /jwks.json                          the public keys currently published
    GET  /authorize?response_type=code&...   a login form: pick the user and their groups
    POST /authorize                          signs in (or denies) and redirects with code/error
    POST /device_authorization               device_code, user_code, verification_uri, interval
    GET  /device?user_code=...               the verification page; POST approves or denies
    POST /token                              authorization_code, device_code, refresh_token
    POST /mint    {"claims": {...}, "alg": "RS256"|"ES256", "kid": optional}  -> {"token"}
    POST /rotate  {"keep_old": bool}         a new signing key of each type -> {"kids"}
    POST /testing/device {"user_code", "answers": [...], "expire": bool}  scripts the polls
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

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


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_SECONDS = 600
DEVICE_SECONDS = 600


@dataclass
class Grant:
    """Who signed in, for which client: what a code, device code or refresh token stands for."""

    client_id: str
    user: str = ""
    groups: list[str] = field(default_factory=list)
    nonce: str | None = None


@dataclass
class Code:
    grant: Grant
    redirect_uri: str
    challenge: str
    used: bool = False


@dataclass
class Device:
    grant: Grant
    user_code: str
    expires: float
    status: str = "pending"  # approved, denied
    answers: list[str] = field(default_factory=list)  # scripted by a test, answered first


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Flows:
    """The provider's grants in memory; one lock, the server is threaded."""

    def __init__(self, keys: Keys, interval: int) -> None:
        self.keys = keys
        self.interval = interval
        self.lock = threading.Lock()
        self.codes: dict[str, Code] = {}
        self.devices: dict[str, Device] = {}  # by device code
        self.refresh: dict[str, Grant] = {}

    def tokens(self, issuer: str, grant: Grant) -> dict[str, Any]:
        now = int(time.time())
        common = {
            "iss": issuer,
            "sub": "u-" + hashlib.sha256(grant.user.encode()).hexdigest()[:12],
            "aud": grant.client_id,
            "iat": now,
            "nbf": now,
            # Real providers give every token its own id: without one, two tokens minted for
            # the same user in the same second are byte-identical (RS256 signs
            # deterministically), and a refresh could not be told from a stale credential.
            "jti": secrets.token_urlsafe(12),
            "exp": now + TOKEN_SECONDS,
            "preferred_username": grant.user,
            "groups": grant.groups,
        }
        id_claims = {**common, **({"nonce": grant.nonce} if grant.nonce else {})}
        refresh = secrets.token_urlsafe(24)
        self.refresh[refresh] = grant
        return {
            "token_type": "Bearer",
            "access_token": self.keys.mint(common, "RS256", None),
            "id_token": self.keys.mint(id_claims, "RS256", None),
            "refresh_token": refresh,
            "expires_in": TOKEN_SECONDS,
        }

    def token(self, issuer: str, form: dict[str, str]) -> tuple[dict[str, Any], int]:
        kind = form.get("grant_type", "")
        with self.lock:
            if kind == "authorization_code":
                return self._code(issuer, form)
            if kind == DEVICE_GRANT:
                return self._device(issuer, form)
            if kind == "refresh_token":
                grant = self.refresh.pop(form.get("refresh_token", ""), None)
                if grant is None or grant.client_id != form.get("client_id"):
                    return _error("invalid_grant", "unknown refresh token")
                return self.tokens(issuer, Grant(grant.client_id, grant.user, grant.groups)), 200
        return _error("unsupported_grant_type", f"grant_type {kind!r}")

    def _code(self, issuer: str, form: dict[str, str]) -> tuple[dict[str, Any], int]:
        code = self.codes.get(form.get("code", ""))
        if code is None or code.used:
            # RFC 6749 4.1.2: a code is good for one exchange only.
            return _error("invalid_grant", "unknown or already used code")
        code.used = True
        if code.grant.client_id != form.get("client_id"):
            return _error("invalid_grant", "the code was issued to another client")
        if code.redirect_uri != form.get("redirect_uri"):
            return _error("invalid_grant", "redirect_uri differs from the authorization request")
        verifier = form.get("code_verifier")
        if not verifier:
            return _error("invalid_grant", "code_verifier is required (PKCE)")
        if not hmac.compare_digest(s256(verifier), code.challenge):
            return _error("invalid_grant", "code_verifier does not match the code_challenge")
        return self.tokens(issuer, code.grant), 200

    def _device(self, issuer: str, form: dict[str, str]) -> tuple[dict[str, Any], int]:
        device = self.devices.get(form.get("device_code", ""))
        if device is None or device.grant.client_id != form.get("client_id"):
            return _error("invalid_grant", "unknown device code")
        if device.answers:
            return _error(device.answers.pop(0), "scripted by the test")
        if time.time() >= device.expires:
            return _error("expired_token", "the device code expired")
        if device.status == "denied":
            return _error("access_denied", "the user denied the request")
        if device.status == "pending":
            return _error("authorization_pending", "the user has not answered yet")
        del self.devices[form["device_code"]]
        return self.tokens(issuer, device.grant), 200

    def start_device(self, issuer: str, client_id: str) -> dict[str, Any]:
        device_code = secrets.token_urlsafe(24)
        user_code = "-".join(
            "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(4)) for _ in range(2)
        )
        with self.lock:
            self.devices[device_code] = Device(
                Grant(client_id), user_code, time.time() + DEVICE_SECONDS
            )
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": f"{issuer}/device",
            "verification_uri_complete": f"{issuer}/device?{urlencode({'user_code': user_code})}",
            "expires_in": DEVICE_SECONDS,
            "interval": self.interval,
        }

    def device_by_user_code(self, user_code: str) -> Device | None:
        return next((d for d in self.devices.values() if d.user_code == user_code), None)


def _error(error: str, description: str) -> tuple[dict[str, Any], int]:
    return {"error": error, "error_description": description}, 400


LOGIN_PAGE = """<!doctype html><html><head><title>Test SSO</title></head><body>
<h1>Sign in to Test SSO</h1>
<form method="post" action="{action}">
{hidden}
<label for="username">User</label> <input id="username" name="username" value="">
<label for="groups">Groups</label> <input id="groups" name="groups" value="">
<button type="submit" name="action" value="approve">{approve}</button>
<button type="submit" name="action" value="deny">Deny</button>
</form></body></html>"""


class Handler(BaseHTTPRequestHandler):
    # One provider per process: serve() sets these before serving.
    keys: Keys
    flows: Flows

    def log_message(self, format: str, *args: Any) -> None:
        return

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def page(self, text: str, status: int = 200) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{port_of(self.server)}"

    def do_GET(self) -> None:
        issuer = self.issuer
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        if url.path == "/.well-known/openid-configuration":
            self.answer(
                {
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/jwks.json",
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "device_authorization_endpoint": f"{issuer}/device_authorization",
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "grant_types_supported": [
                        "authorization_code",
                        DEVICE_GRANT,
                        "refresh_token",
                    ],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
                    "scopes_supported": ["openid", "profile", "groups", "offline_access"],
                }
            )
        elif url.path == "/jwks.json":
            self.answer(self.keys.jwks())
        elif url.path == "/authorize":
            self.authorize_form(query)
        elif url.path == "/device":
            hidden = _hidden({"user_code": query.get("user_code", "")})
            self.page(LOGIN_PAGE.format(action="/device", hidden=hidden, approve="Approve"))
        else:
            self.answer({"error": "not_found"}, 404)

    def authorize_form(self, query: dict[str, str]) -> None:
        missing = [
            name
            for name in ("client_id", "redirect_uri", "state", "code_challenge")
            if not query.get(name)
        ]
        if query.get("response_type") != "code" or missing:
            self.page(f"<p>invalid_request: missing {missing or 'response_type=code'}</p>", 400)
        elif query.get("code_challenge_method") != "S256":
            self.page("<p>invalid_request: code_challenge_method must be S256</p>", 400)
        else:
            hidden = _hidden(query)
            self.page(LOGIN_PAGE.format(action="/authorize", hidden=hidden, approve="Sign in"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(raw.decode()))
            self.form_post(form)
            return
        body = json.loads(raw or b"{}")
        if self.path == "/mint":
            token = self.keys.mint(body["claims"], body.get("alg", "RS256"), body.get("kid"))
            self.answer({"token": token})
        elif self.path == "/rotate":
            self.answer({"kids": self.keys.rotate(keep_old=bool(body.get("keep_old")))})
        elif self.path == "/testing/device":
            with self.flows.lock:
                device = self.flows.device_by_user_code(body["user_code"])
                if device is None:
                    self.answer({"error": "unknown user code"}, 404)
                    return
                device.answers.extend(body.get("answers", []))
                if body.get("expire"):
                    device.expires = 0.0
            self.answer({})
        else:
            self.answer({"error": "not_found"}, 404)

    def form_post(self, form: dict[str, str]) -> None:
        groups = [g.strip() for g in form.get("groups", "").split(",") if g.strip()]
        approved = form.get("action") == "approve"
        if self.path == "/token":
            body, status = self.flows.token(self.issuer, form)
            self.answer(body, status)
        elif self.path == "/device_authorization":
            if not form.get("client_id"):
                self.answer(*_error("invalid_request", "client_id is required"))
                return
            self.answer(self.flows.start_device(self.issuer, form["client_id"]))
        elif self.path == "/authorize":
            target = form.get("redirect_uri", "")
            separator = "&" if "?" in target else "?"
            if not approved:
                answer = {"error": "access_denied", "state": form.get("state", "")}
                self.redirect(target + separator + urlencode(answer))
                return
            code = secrets.token_urlsafe(24)
            grant = Grant(form["client_id"], form.get("username", ""), groups, form.get("nonce"))
            with self.flows.lock:
                self.flows.codes[code] = Code(grant, target, form["code_challenge"])
            self.redirect(target + separator + urlencode({"code": code, "state": form["state"]}))
        elif self.path == "/device":
            with self.flows.lock:
                device = self.flows.device_by_user_code(form.get("user_code", ""))
                if device is None:
                    self.page("<p>Unknown code.</p>", 404)
                    return
                device.status = "approved" if approved else "denied"
                device.grant.user = form.get("username", "")
                device.grant.groups = groups
            self.page(f"<p>Device {device.status}.</p>")
        else:
            self.answer({"error": "not_found"}, 404)


def serve(port: int = 0, interval: int = 5) -> None:
    Handler.keys = Keys()
    Handler.flows = Flows(Handler.keys, interval)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


def _hidden(fields: dict[str, str]) -> str:
    return "\n".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )


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

    def answer_device(
        self, user_code: str, *, user: str = "", groups: str = "", approve: bool = True
    ) -> None:
        """What the person does on the verification page: sign in and approve (or deny)."""
        form = {"user_code": user_code, "username": user, "groups": groups}
        answer = httpx.post(
            f"{self.url}/device", data=form | {"action": "approve" if approve else "deny"}
        )
        answer.raise_for_status()

    def script_device(self, user_code: str, *answers: str, expire: bool = False) -> None:
        """The next polls of ``user_code``'s device code get these errors (then as usual)."""
        body = {"user_code": user_code, "answers": list(answers), "expire": expire}
        httpx.post(f"{self.url}/testing/device", json=body).raise_for_status()


@contextlib.contextmanager
def oidc_provider(interval: int = 1) -> Iterator[OidcProvider]:
    """``interval``: the seconds a device client is told to wait between polls."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.oidc_provider", str(interval)],
        stdout=subprocess.PIPE,
        text=True,
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
    serve(interval=int(sys.argv[1]) if len(sys.argv) > 1 else 5)
