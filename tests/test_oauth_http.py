"""OAuth resource-server mode over real HTTP: JWTs signed in the test with generated keys, the JWKS served
from a tiny HTTP server on 127.0.0.1 (and rotated mid-test), every refusal a 401 (or 403) whose
WWW-Authenticate names the RFC 9728 metadata document, and the SDK client sending valid tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import ProtectedResourceMetadata

from tests.conftest import http_server
from tests.test_server_http import ACCEPT, INIT

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example.test"
AUDIENCE = "https://mcp.example.test/mcp"
METADATA_URL = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"
REFETCH_SECONDS = 0.5


@dataclass
class Jwks:
    """A JWKS endpoint on 127.0.0.1 whose document the test may swap; counts the fetches."""

    document: dict[str, Any]
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Idp:
    jwks: Jwks
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    url: str = ""
    log: Path | None = None
    issued: list[str] = field(default_factory=list)

    def token(self, *, key: Any = None, alg: str = "RS256", kid: str | None = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "zoe", "iat": now, "exp": now + 600}
        body |= {"scope": "betty openid", "groups": ["staff", "analyst"]}
        body |= claims
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": kid} if kid else {}
        token = jwt.encode(body, key or self.rsa_key, algorithm=alg, headers=headers)
        self.issued.append(token)
        return token


def jwk(public: Any, kid: str, alg: str) -> dict[str, Any]:
    convert = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**convert.to_jwk(public, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


def serve_jwks(jwks: Jwks) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with jwks.lock:
                jwks.fetches += 1
                body = json.dumps(jwks.document).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/jwks"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    found = Idp(Jwks({"keys": [jwk(rsa_key.public_key(), "k1", "RS256")]}), rsa_key, ec_key)
    jwks_server, jwks_url = serve_jwks(found.jwks)
    workspace = tmp_path_factory.mktemp("oauth")
    config = {
        "auth": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_url": jwks_url,
            "required_scopes": ["betty"],
            "role_claim": "groups",
            "jwks_refetch_seconds": REFETCH_SECONDS,
        },
        "roles": {"analyst": {"tools": {"include": ["test_echo", "skills_list"]}}},
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump(config))
    found.log = workspace / "server.log"
    try:
        with http_server(workspace, "--log-level", "info", stderr=found.log) as url:
            found.url = url
            yield found
    finally:
        jwks_server.shutdown()


async def post(idp: Idp, token: str | None) -> httpx2.Response:
    headers = {**ACCEPT, **({"authorization": f"Bearer {token}"} if token is not None else {})}
    async with httpx2.AsyncClient() as http:
        return await http.post(idp.url, json=INIT, headers=headers)


async def tools_seen_with(idp: Idp, token: str) -> set[str]:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30)
    async with http, Client(streamable_http_client(idp.url, http_client=http)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert not (await client.call_tool("test_echo", {"message": "hi"})).is_error
        return names


def hs256_with_the_public_key(idp: Idp) -> str:
    """The classic confusion attack: HMAC-sign with the RSA public key (PEM) as the shared secret."""
    pem = idp.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600, "scope": "betty"}
    payload = part(json.dumps(claims).encode())
    signature = part(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


async def test_the_protected_resource_metadata_validates(idp: Idp) -> None:
    base = idp.url.removesuffix("/mcp")
    async with httpx2.AsyncClient() as http:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            answer = await http.get(base + path)
            assert answer.status_code == 200
            metadata = ProtectedResourceMetadata.model_validate(answer.json())
            assert str(metadata.resource) == AUDIENCE
            assert [str(s).rstrip("/") for s in metadata.authorization_servers] == [ISSUER]
            assert metadata.scopes_supported == ["betty"] and metadata.bearer_methods_supported == ["header"]


async def test_a_valid_token_reaches_the_tools_of_its_role(idp: Idp) -> None:
    assert await tools_seen_with(idp, idp.token()) == {"test_echo", "skills_list"}


async def test_a_request_without_a_token_is_told_where_the_metadata_is(idp: Idp) -> None:
    refused = await post(idp, None)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == f'Bearer scope="betty", resource_metadata="{METADATA_URL}"'


# Each bad token, and the reason its 401 gives (error_description).
BAD_TOKENS = {
    "wrong audience": "is not for this server",
    "wrong issuer": "issuer is not the one",
    "expired": "has expired",
    "not yet valid": "not valid yet",
    "bad signature": "signature does not verify",
    "alg none": "'none' are not accepted",
    "HS256 with the public key": "'HS256' are not accepted",
    "kid not in the JWKS": "not in the issuer's JWKS",
    "no exp": "has no exp claim",
    "not a JWT": "is not a JWT",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_each_bad_token_is_a_401_naming_the_metadata(idp: Idp, case: str) -> None:
    now = int(time.time())
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048) if "signature" in case else None
    token = {
        "wrong audience": lambda: idp.token(aud="https://other.example.test/mcp"),
        "wrong issuer": lambda: idp.token(iss="https://evil.example.test"),
        "expired": lambda: idp.token(iat=now - 900, exp=now - 120),  # past the 30 s leeway
        "not yet valid": lambda: idp.token(nbf=now + 120),
        "bad signature": lambda: idp.token(key=forger),
        "alg none": lambda: jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "zoe", "exp": now + 60}, None, "none"
        ),
        "HS256 with the public key": lambda: hs256_with_the_public_key(idp),
        "kid not in the JWKS": lambda: idp.token(kid="k-unknown"),
        "no exp": lambda: idp.token(exp=None),
        "not a JWT": lambda: "a.b.c",
    }[case]()
    refused = await post(idp, token)
    assert refused.status_code == 401, refused.text
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
    assert BAD_TOKENS[case] in challenge and refused.json()["error_description"] in challenge
    assert challenge.endswith(f'resource_metadata="{METADATA_URL}"'), challenge
    assert token not in challenge and token not in refused.text


async def test_a_token_without_the_required_scope_is_a_403(idp: Idp) -> None:
    refused = await post(idp, idp.token(scope="openid"))
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"') and 'scope="betty"' in challenge
    assert f'resource_metadata="{METADATA_URL}"' in challenge


async def test_made_up_kids_refetch_the_jwks_at_most_once_per_interval(idp: Idp) -> None:
    await anyio.sleep(REFETCH_SECONDS)
    before, started = idp.jwks.fetches, time.monotonic()
    for _ in range(20):
        assert (await post(idp, idp.token(kid=uuid.uuid4().hex))).status_code == 401
    allowed = 1 + (time.monotonic() - started) / REFETCH_SECONDS
    assert 1 <= idp.jwks.fetches - before <= min(allowed, 10)


async def test_keys_rotated_mid_test_are_picked_up(idp: Idp) -> None:
    old = idp.token()
    assert (await post(idp, old)).status_code == 200
    with idp.jwks.lock:
        idp.jwks.document = {"keys": [jwk(idp.ec_key.public_key(), "k2", "ES256")]}
    await anyio.sleep(REFETCH_SECONDS)  # the refetch interval since the last unknown kid
    assert await tools_seen_with(idp, idp.token(key=idp.ec_key, alg="ES256", kid="k2")) == {
        "test_echo",
        "skills_list",
    }
    assert (await post(idp, old)).status_code == 401, "the retired key no longer verifies"
    assert (await post(idp, idp.token(kid="k2"))).status_code == 401, "an RS256 token cannot use an EC key"


def test_no_token_reaches_the_server_log(idp: Idp) -> None:
    assert idp.log is not None and idp.issued
    text = idp.log.read_text()
    assert "refused (401)" in text
    assert not any(token in text for token in idp.issued)
