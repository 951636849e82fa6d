"""A model state's JSON in the form the golden ``.state.json`` files were recorded in."""

from __future__ import annotations

import msgspec

from events.model.state import ModelState


def as_recorded(state: ModelState) -> bytes:
    """The state's JSON with its versions as one object by number: a VersionTable stores
    them in blocks since the golden files were written; the versions are the same."""
    fields = msgspec.to_builtins(state)
    fields["versions"] = dict(state.versions.items())
    return msgspec.json.encode(fields)
