"""Stream ids and unique keys: built and parsed here, and nowhere else. Pure.

    model:{model_id}               a registered model (events.model)
    metrics:{model_id}:{version}   metric batches of one version (events.metrics)
    policy:registry                the registry-wide default policy (events.registry_policy)
    token:{token_id}               an access token (events.access)
    artifacts:{model_id}           the blobs stored for a model (events.artifacts)
    blobstore:collections          blobs deleted by garbage collection (events.blob_collection)
    webhook:{subscription_id}      an HTTP webhook subscription (events.webhooks)
    access:registry                custom roles, grants, service accounts (events.access_grants)
    subject:{subject_id}           a pseudonymous person, and its erasure (events.subjects)

Model and token ids are opaque ids chosen by the shell (``A-Z a-z 0-9 _ -``, at most 64),
never names, so a rename moves no history and a stream id never holds a user's ``:``.
A model's name is a unique key (``model-name:{name}``) held by its stream.
"""

from __future__ import annotations

from events.names import validate_id

MODEL_TYPE = "model"
METRICS_TYPE = "metrics"
POLICY_TYPE = "policy"
TOKEN_TYPE = "token"  # noqa: S105 - a stream type, not a secret
ARTIFACTS_TYPE = "artifacts"
BLOBSTORE_TYPE = "blobstore"
WEBHOOK_TYPE = "webhook"
ACCESS_TYPE = "access"
SUBJECT_TYPE = "subject"

REGISTRY_POLICY_STREAM = f"{POLICY_TYPE}:registry"
# One stream for the whole shared blob store: every deletion moves it, so an upload or a
# registration guarded by its version cannot land on bytes deleted meanwhile.
BLOB_COLLECTIONS_STREAM = f"{BLOBSTORE_TYPE}:collections"
ACCESS_STREAM = f"{ACCESS_TYPE}:registry"

_NAME_KEY = "model-name:"


def model_stream(model_id: str) -> str:
    return f"{MODEL_TYPE}:{validate_id(model_id, 'model_id')}"


def metrics_stream(model_id: str, version: int) -> str:
    if version < 1:
        raise ValueError("versions are numbered from 1")
    return f"{METRICS_TYPE}:{validate_id(model_id, 'model_id')}:{version}"


def token_stream(token_id: str) -> str:
    return f"{TOKEN_TYPE}:{validate_id(token_id, 'token_id')}"


def artifacts_stream(model_id: str) -> str:
    return f"{ARTIFACTS_TYPE}:{validate_id(model_id, 'model_id')}"


def webhook_stream(subscription_id: str) -> str:
    return f"{WEBHOOK_TYPE}:{validate_id(subscription_id, 'subscription_id')}"


def subject_stream(subject_id: str) -> str:
    return f"{SUBJECT_TYPE}:{validate_id(subject_id, 'subject_id')}"


def webhook_id_of(stream_id: str) -> str:
    """The subscription a ``webhook:`` stream holds; ValueError for any other."""
    kind, _, subscription_id = stream_id.partition(":")
    if kind != WEBHOOK_TYPE or not subscription_id:
        raise ValueError(f"{stream_id!r} is not a webhook stream")
    return subscription_id


def stream_type(stream_id: str) -> str:
    """``model``, ``metrics``, ``policy``, ``token``, ``artifacts`` or ``webhook``: the part
    before the first ``:``."""
    return stream_id.split(":", 1)[0]


def model_id_or_none(stream_id: str) -> str | None:
    """The model a ``model:``, ``metrics:`` or ``artifacts:`` stream belongs to; None for
    other streams."""
    kind, _, rest = stream_id.partition(":")
    if kind in (MODEL_TYPE, ARTIFACTS_TYPE):
        return rest or None
    if kind == METRICS_TYPE:
        return rest.split(":", 1)[0] or None
    return None


def model_id_of(stream_id: str) -> str:
    """The model a ``model:``, ``metrics:`` or ``artifacts:`` stream belongs to; ValueError
    for others."""
    model_id = model_id_or_none(stream_id)
    if model_id is None:
        raise ValueError(f"{stream_id!r} is not a model's stream")
    return model_id


def metrics_of(stream_id: str) -> tuple[str, int]:
    """``(model_id, version)`` of a ``metrics:`` stream; ValueError for any other."""
    kind, _, rest = stream_id.partition(":")
    model_id, _, version = rest.partition(":")
    if kind != METRICS_TYPE or not model_id or not version.isdigit():
        raise ValueError(f"{stream_id!r} is not a metrics stream")
    return model_id, int(version)


def token_id_of(stream_id: str) -> str:
    """The token a ``token:`` stream holds; ValueError for any other."""
    kind, _, token_id = stream_id.partition(":")
    if kind != TOKEN_TYPE:
        raise ValueError(f"{stream_id!r} is not a token stream")
    return token_id


def model_streams_bounds(model_id: str) -> tuple[str, str, str]:
    """One model's streams as ``(model stream, low, high)``: its metrics streams are the ids
    ``low <= id < high`` in byte order (the C collation), so an index range serves them."""
    prefix = f"{METRICS_TYPE}:{model_id}:"
    return f"{MODEL_TYPE}:{model_id}", prefix, prefix[:-1] + ";"


def name_key(name: str) -> str:
    """The unique key a model's stream holds for its name."""
    return f"{_NAME_KEY}{name}"


def name_of_key(key: str) -> str | None:
    """The model name a unique key holds, or None if it is another kind of key."""
    return key[len(_NAME_KEY) :] if key.startswith(_NAME_KEY) else None


def name_key_pattern() -> str:
    """A LIKE pattern matching every model-name key."""
    return f"{_NAME_KEY}%"


def request_key(request_id: str) -> str:
    """The unique key a model's stream holds for each promotion request it opened."""
    return f"promotion:{request_id}"
