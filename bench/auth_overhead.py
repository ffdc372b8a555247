"""Per-request cost of knowing who calls: the HTTP bearer gate (``betty_mcp/mcp/auth.py``) in front of an
ASGI app that answers at once, measured in-process, rounds interleaved:

- ``none``: no gate (the baseline: loopback with nothing configured);
- ``shared``: the shared ``--token`` (a SHA-256 and a constant-time compare);
- ``user``: a per-user token (its SHA-256 looked up in the SQLite state database);
- ``jwt_rs256`` / ``jwt_es256``: an OAuth access token (RS256, 2048-bit / ES256) validated against a
  warm JWKS cache: header, key, signature, iss, aud, exp, nbf, scopes.

Overhead = p50(gated) - p50(none); the target is JWT overhead <= 0.3 ms at p50. Prints JSON.

    .venv/bin/python bench/auth_overhead.py [--rounds 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from betty_mcp.core.config import AuthConfig  # noqa: E402
from betty_mcp.core.oauth import JwtVerifier  # noqa: E402
from betty_mcp.llm.users import Users  # noqa: E402
from betty_mcp.mcp.auth import Authenticator, BearerGate  # noqa: E402
from betty_mcp.store import SqliteStore  # noqa: E402

ISSUER, AUDIENCE = "https://idp.example.test", "https://mcp.example.test/mcp"
TARGET_MS = 0.3


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def scope_with(token: str | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8765"), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}


async def one(app: Any, scope: dict[str, Any]) -> float:
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    started = time.perf_counter()
    await app(scope, receive, send)
    elapsed = (time.perf_counter() - started) * 1000
    if status != [200]:
        raise SystemExit(f"request refused: {status}")
    return elapsed


def jwk(public: Any, kid: str, alg: str) -> dict[str, Any]:
    convert = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**convert.to_jwk(public, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


def token(key: Any, alg: str, kid: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "iat": now, "exp": now + 3600, "scope": "betty"}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


async def main(rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="betty-auth-bench-"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = folder / "jwks.json"
    keys = [jwk(rsa_key.public_key(), "r1", "RS256"), jwk(ec_key.public_key(), "e1", "ES256")]
    jwks.write_text(json.dumps({"keys": keys}))
    config = AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks, required_scopes=["betty"])
    store = SqliteStore(folder / "state.sqlite", folder / "runs")
    users = Users(store)
    user_token = await users.add("ada")
    gate = BearerGate(answer, Authenticator("shared-token-0123", users, JwtVerifier(config, [])))
    cases = {
        "none": (answer, scope_with(None)),
        "shared": (gate, scope_with("shared-token-0123")),
        "user": (gate, scope_with(user_token)),
        "jwt_rs256": (gate, scope_with(token(rsa_key, "RS256", "r1"))),
        "jwt_es256": (gate, scope_with(token(ec_key, "ES256", "e1"))),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for app, scope in cases.values():  # warm: the JWKS read, SQLite opened, imports done
        for _ in range(50):
            await one(app, scope)
    for _ in range(rounds):
        for name, (app, scope) in cases.items():
            samples[name].append(await one(app, scope))
    await store.aclose()
    p50 = {name: statistics.median(s) for name, s in samples.items()}
    p99 = {name: statistics.quantiles(s, n=100)[98] for name, s in samples.items()}
    overhead = {name: p50[name] - p50["none"] for name in cases if name != "none"}
    jwt_worst = max(overhead["jwt_rs256"], overhead["jwt_es256"])
    return {
        "rounds": rounds,
        "p50_ms": {k: round(v, 4) for k, v in p50.items()},
        "p99_ms": {k: round(v, 4) for k, v in p99.items()},
        "overhead_p50_ms": {k: round(v, 4) for k, v in overhead.items()},
        "ratio_p50_vs_shared_token": {
            k: round(p50[k] / p50["shared"], 2) for k in ("user", "jwt_rs256", "jwt_es256")
        },
        "target_jwt_overhead_ms": TARGET_MS,
        "met": jwt_worst <= TARGET_MS,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args.rounds), indent=2))
