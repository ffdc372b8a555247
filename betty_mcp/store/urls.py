"""Database URLs as they may be shown: the password never leaves this module in clear.

redact("postgresql://ann:s3cret@db:5432/betty")   # 'postgresql://ann:***@db:5432/betty'
is_postgres("postgres://db/betty")                 # True
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
_SECRET_PARAMS = {"password", "sslpassword", "passfile"}
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@", re.I)


def is_postgres(url: str | None) -> bool:
    return bool(url) and urlsplit(url or "").scheme in POSTGRES_SCHEMES


def password(url: str) -> str | None:
    """The URL's password (userinfo or ``?password=``), to register as a secret value."""
    found = _USERINFO.match(url)
    if found and found["password"]:
        return found["password"]
    query = dict(parse_qsl(urlsplit(url).query))
    return query.get("password") or None


def redact(url: str) -> str:
    """``url`` with its password (and any password-like query parameter) replaced by ``***``."""
    shown = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url, count=1)
    for name in _SECRET_PARAMS:
        shown = re.sub(rf"([?&]{name}=)[^&#]*", r"\1***", shown, flags=re.I)
    return shown
