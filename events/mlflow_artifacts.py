"""How MLflow's artifact proxy protocol names a version's files, and what a listing of one
of its directories holds. Pure.

MLflow clients fetch a registered model's files through ``mlflow-artifacts:/<path>`` URIs,
which they resolve against the tracking server (``/api/2.0/mlflow-artifacts/artifacts``).
modelreg hands out one such URI per version whose files it stores:

    mlflow-artifacts:/modelreg/models/{name}/versions/{number}

and a client then asks for paths below it: ``modelreg/models/churn/versions/3`` (the
version's root), ``.../3/data`` (a directory), ``.../3/MLmodel`` (a file). A manifest is
a flat list of file paths, so directories are what the paths imply, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from events.errors import ValidationError
from events.version_content import ArtifactEntry, validate_artifact_path

SCHEME = "mlflow-artifacts:"
ROOT = "modelreg/models"
VERSIONS = "versions"
PATH_FIELD = "path"
_SHAPE = f"{ROOT}/{{name}}/{VERSIONS}/{{version}}[/{{file or directory}}]"


def download_uri(model: str, version: int) -> str:
    """The URI MLflow's get-download-uri answers for a version whose files modelreg stores."""
    return f"{SCHEME}/{ROOT}/{model}/{VERSIONS}/{version}"


def external_source(artifacts: Sequence[ArtifactEntry]) -> str | None:
    """The URI of a version's one external artifact (what ``model-versions/create`` records
    from MLflow's ``source``); None when modelreg holds its files."""
    if len(artifacts) == 1 and artifacts[0].external:
        return artifacts[0].uri
    return None


def mlflow_source(model: str, version: int, artifacts: Sequence[ArtifactEntry]) -> str:
    """MLflow's ``source`` of a version: its ``external_source``, else ``download_uri``.
    The views keep the first (``projections.views.model_versions``), and
    ``projections.mlflow_views`` completes the rule in SQL for their rows."""
    external = external_source(artifacts)
    return download_uri(model, version) if external is None else external


@dataclass(frozen=True, slots=True)
class ArtifactPath:
    """A path of the proxy split into what it names: a model, a version reference (the
    number MLflow was given, or anything ``resolve_version`` takes) and a path inside the
    version's files (``""``: its root)."""

    model: str
    version: str
    inner: str


@dataclass(frozen=True, slots=True)
class Listed:
    """One entry of a directory listing: a name relative to the listed directory."""

    path: str
    is_dir: bool
    file_size: int | None = None


def parse_path(path: str) -> ArtifactPath:
    """``modelreg/models/churn/versions/3/data/x.pkl`` -> (churn, 3, data/x.pkl).

    ValidationError (field ``path``): ``rule: pattern`` for any other shape, or the
    manifest's own path rules for the part inside the version (no ``..``, ``.``, empty
    segments, ``\\`` or invisible characters), so no spelling of a path reaches anything
    but the version's manifest.
    """
    trimmed = path.strip("/")
    parts = trimmed.split("/", 5)
    if (
        len(parts) < 5
        or "/".join(parts[:2]) != ROOT
        or parts[3] != VERSIONS
        or not parts[2]
        or not parts[4]
    ):
        raise ValidationError(
            PATH_FIELD,
            "pattern",
            f"modelreg serves the files of registered versions only: {_SHAPE}, not {path!r}",
        )
    inner = parts[5] if len(parts) == 6 else ""
    if inner:
        validate_artifact_path(inner, PATH_FIELD)
    return ArtifactPath(model=parts[2], version=parts[4], inner=inner)


def list_directory(files: Iterable[tuple[str, int]], directory: str) -> list[Listed]:
    """The entries directly under ``directory`` (``""``: the root) of a manifest given as
    (path, size) pairs, sorted by name; sub-directories once each, without a size.

    A path that names a file, or nothing, lists as empty: MLflow's own server answers so,
    and its client takes an empty listing of a path as "download it as a file".
    """
    prefix = f"{directory}/" if directory else ""
    found: dict[str, Listed] = {}
    for path, size in files:
        if not path.startswith(prefix):
            continue
        name, slash, _ = path[len(prefix) :].partition("/")
        found.setdefault(name, Listed(name, True) if slash else Listed(name, False, size))
    return [found[name] for name in sorted(found)]
