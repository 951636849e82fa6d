"""The vendored documentation viewers are byte for byte the published files, with their licences."""

from __future__ import annotations

import hashlib

from service.api.openapi import STATIC


def test_the_vendored_files_are_the_published_ones_with_their_licences() -> None:
    listed = {}
    for line in (STATIC / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    shipped = {
        str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file() and p.parent != STATIC
    }
    assert shipped == set(listed), shipped ^ set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    assert {"swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"} <= shipped
