"""What makes a model version reproducible and trustworthy, frozen at registration. Pure.

A version's content is its artifact manifest, the code and dependencies that produced it,
the training parameters, the datasets, the run that trained it and its signature. It is
recorded once in ``model.version_registered`` with a digest over its canonical encoding;
no later event can change it (tags, descriptions, metrics and stages live beside it).

These structs are embedded in stored events, so they carry no msgspec ``Meta``
constraints: a limit tightened later must never make an old event unreadable. The limits
below are checked when a version is registered, by ``validate_content``.
"""

from __future__ import annotations

import enum
import hashlib
import re
import unicodedata

import msgspec

from events.envelope import encode_canonical
from events.errors import ValidationError
from events.names import validate_dataset_name, validate_finite, validate_key

MAX_ARTIFACTS = 10_000
MAX_PARAMETERS = 1_000
MAX_DATASETS = 100
PATH_MAX = 1024
URI_MAX = 2048
REF_MAX = 256
PARAM_VALUE_MAX = 6000
SIGNATURE_MAX_BYTES = 64 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_COMMIT = re.compile(r"[0-9a-f]{7,64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_PYTHON_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
# Cc: controls; Cf: format (bidi overrides and marks, zero-width space/joiners, BOM); Zl, Zp:
# line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})

ParamValue = str | int | float | bool


class DatasetRole(enum.StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


class ArtifactEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One file of the model: where it sits in the package, its hash and size, and, for an
    ``external`` entry, where the bytes are (``uri``); the bytes of any other entry are a
    blob the registry stores for the model (``events.artifacts``).

    Defaults are omitted from the encoding, so entries recorded before ``external`` existed
    (every one with a ``uri``) encode, and hash, exactly as they did.
    """

    path: str
    uri: str = ""
    sha256: str
    size: int
    external: bool = False


class CodeReference(msgspec.Struct, frozen=True, kw_only=True):
    repository: str
    commit: str
    path: str = ""


class FileReference(msgspec.Struct, frozen=True, kw_only=True):
    """A file pinned by digest, e.g. ``uv.lock`` or ``requirements.txt``."""

    uri: str
    sha256: str


class Dependencies(msgspec.Struct, frozen=True, kw_only=True):
    python_version: str
    lock_file: FileReference | None = None


class DatasetReference(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    uri: str
    digest: str
    role: DatasetRole


class RunReference(msgspec.Struct, frozen=True, kw_only=True):
    """The experiment-tracker run that produced the version (MLflow, W&B, ...)."""

    run_id: str
    url: str = ""
    tracker: str = ""


class ModelSignature(msgspec.Struct, frozen=True, kw_only=True):
    """Input/output schema documents, kept as the text the client sent (opaque here)."""

    inputs: str
    outputs: str
    params: str = ""


class VersionContent(msgspec.Struct, frozen=True, kw_only=True):
    artifacts: tuple[ArtifactEntry, ...]
    code: CodeReference | None = None
    dependencies: Dependencies | None = None
    parameters: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    datasets: tuple[DatasetReference, ...] = ()
    run: RunReference | None = None
    signature: ModelSignature | None = None


def content_digest(content: VersionContent) -> str:
    """``sha256:<hex>`` over the canonical encoding: what auditors recompute from the event."""
    return "sha256:" + hashlib.sha256(encode_canonical(content)).hexdigest()


def _fail(field: str, rule: str, message: str, **details: object) -> ValidationError:
    return ValidationError(field, rule, message, **details)


def _bounded(value: str, field: str, max_len: int) -> None:
    if not value:
        raise _fail(field, "required", f"{field} must not be empty")
    if len(value) > max_len:
        raise _fail(field, "length", f"{field} is longer than {max_len} characters", max=max_len)


def _uri(value: str, field: str) -> None:
    _bounded(value, field, URI_MAX)
    if _URI.fullmatch(value) is None:
        raise _fail(
            field, "pattern", f"{field} must be an absolute URI with a scheme (s3://, file:, ...)"
        )


def _sha256(value: str, field: str) -> None:
    if _SHA256.fullmatch(value) is None:
        raise _fail(field, "pattern", f"{field} must be 64 lower-case hex digits")


def _relative_path(value: str, field: str) -> None:
    _bounded(value, field, PATH_MAX)
    segments = value.split("/")
    if value.startswith("/") or "\\" in value or any(s in ("", ".", "..") for s in segments):
        raise _fail(
            field,
            "pattern",
            f"{field} must be a relative path without '..', '.', empty segments or '\\'",
        )
    # Control, bidi and zero-width characters make a path read differently from what it
    # is (an "exe.txt" that ends in ".exe"), so no path may hold one.
    hidden = next((c for c in value if unicodedata.category(c) in _HIDDEN_CATEGORIES), None)
    if hidden is not None:
        raise _fail(
            field,
            "invisible_character",
            f"{field} holds U+{ord(hidden):04X}, a control, format (bidi, zero-width) or"
            " separator character",
        )


def validate_artifact_path(value: str, field: str) -> None:
    """The rule every artifact path follows (relative, no dot segments, nothing hidden),
    for code outside this module that takes a path to look one up."""
    _relative_path(value, field)


def validate_content(content: VersionContent, field: str = "content") -> None:
    """Check every limit; raise ``ValidationError`` naming the first offending field."""
    _validate_artifacts(content.artifacts, f"{field}.artifacts")
    if content.code is not None:
        _validate_code(content.code, f"{field}.code")
    if content.dependencies is not None:
        _validate_dependencies(content.dependencies, f"{field}.dependencies")
    _validate_parameters(content.parameters, f"{field}.parameters")
    _validate_datasets(content.datasets, f"{field}.datasets")
    if content.run is not None:
        _validate_run(content.run, f"{field}.run")
    if content.signature is not None:
        _validate_signature(content.signature, f"{field}.signature")


def _validate_artifacts(artifacts: tuple[ArtifactEntry, ...], field: str) -> None:
    if not artifacts:
        raise _fail(field, "required", "a version needs at least one artifact")
    if len(artifacts) > MAX_ARTIFACTS:
        raise _fail(field, "too_many", f"at most {MAX_ARTIFACTS} artifacts", max=MAX_ARTIFACTS)
    seen: set[str] = set()
    for index, entry in enumerate(artifacts):
        where = f"{field}[{index}]"
        _relative_path(entry.path, f"{where}.path")
        if entry.path in seen:
            raise _fail(f"{where}.path", "unique", f"artifact path {entry.path!r} appears twice")
        seen.add(entry.path)
        _artifact_location(entry, where)
        _sha256(entry.sha256, f"{where}.sha256")
        if entry.size < 0:
            raise _fail(f"{where}.size", "range", "an artifact size is a byte count >= 0")


def _artifact_location(entry: ArtifactEntry, where: str) -> None:
    """An external entry says where its bytes are; any other is a stored blob, and a
    ``uri`` on it would promise a location the registry does not answer for."""
    if entry.external:
        _uri(entry.uri, f"{where}.uri")
    elif entry.uri:
        raise _fail(
            f"{where}.external",
            "external_marker",
            f'artifact {entry.path!r} has a uri: mark it "external": true to keep the bytes'
            " there, or drop the uri and upload the blob",
            path=entry.path,
        )


def _validate_code(code: CodeReference, field: str) -> None:
    _bounded(code.repository, f"{field}.repository", URI_MAX)
    if _GIT_COMMIT.fullmatch(code.commit) is None:
        raise _fail(f"{field}.commit", "pattern", "a commit is 7-64 lower-case hex digits")
    if code.path:
        _relative_path(code.path, f"{field}.path")


def _validate_dependencies(deps: Dependencies, field: str) -> None:
    if _PYTHON_VERSION.fullmatch(deps.python_version) is None:
        raise _fail(f"{field}.python_version", "pattern", "expected e.g. '3.11' or '3.11.7'")
    if deps.lock_file is not None:
        _uri(deps.lock_file.uri, f"{field}.lock_file.uri")
        _sha256(deps.lock_file.sha256, f"{field}.lock_file.sha256")


def _validate_run(run: RunReference, field: str) -> None:
    _bounded(run.run_id, f"{field}.run_id", REF_MAX)
    if run.url:
        _uri(run.url, f"{field}.url")
    if len(run.tracker) > REF_MAX:
        raise _fail(f"{field}.tracker", "length", f"at most {REF_MAX} characters", max=REF_MAX)


def _validate_signature(signature: ModelSignature, field: str) -> None:
    for part in ("inputs", "outputs", "params"):
        text: str = getattr(signature, part)
        if len(text.encode("utf-8", "surrogatepass")) > SIGNATURE_MAX_BYTES:
            raise _fail(f"{field}.{part}", "length", f"at most {SIGNATURE_MAX_BYTES} bytes")


def _validate_parameters(parameters: dict[str, ParamValue], field: str) -> None:
    if len(parameters) > MAX_PARAMETERS:
        raise _fail(field, "too_many", f"at most {MAX_PARAMETERS} parameters", max=MAX_PARAMETERS)
    for key, value in parameters.items():
        where = f"{field}.{key}"
        validate_key(key, where)
        if isinstance(value, float):
            validate_finite(value, where)
        elif isinstance(value, str) and len(value) > PARAM_VALUE_MAX:
            raise _fail(
                where, "length", f"at most {PARAM_VALUE_MAX} characters", max=PARAM_VALUE_MAX
            )


def _validate_datasets(datasets: tuple[DatasetReference, ...], field: str) -> None:
    if len(datasets) > MAX_DATASETS:
        raise _fail(field, "too_many", f"at most {MAX_DATASETS} datasets", max=MAX_DATASETS)
    seen: set[tuple[str, DatasetRole]] = set()
    for index, dataset in enumerate(datasets):
        where = f"{field}[{index}]"
        validate_dataset_name(dataset.name, f"{where}.name")
        _uri(dataset.uri, f"{where}.uri")
        _bounded(dataset.digest, f"{where}.digest", REF_MAX)
        if (dataset.name, dataset.role) in seen:
            raise _fail(
                where, "unique", f"dataset {dataset.name!r} is listed twice as {dataset.role}"
            )
        seen.add((dataset.name, dataset.role))
