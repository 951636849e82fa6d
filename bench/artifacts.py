"""Benchmark model-file transfers through the API against raw copies of the same bytes.

    python -m bench.artifacts [--quick] [--database-url URL] [--nats-url URL] [--json]

Runs a real ``modelreg serve`` twice, once on the file store and once on S3 (moto's
server, tests/support/s3_server.py), and moves 1 MiB / 100 MiB / 1 GiB files (``--quick``:
1 MiB and 100 MiB, plus the 1 GiB memory run on the file store) with ``curl``:

- upload (``PUT .../blobs/sha256:<hex>``) and download (``GET .../files/<path>``) through
  the API, beside ``dd ... conv=fsync`` writing and ``dd`` reading the same bytes on the
  same disk (file store), and beside a raw ``curl -T`` PUT / GET of them (signed, as the
  registry's are) to the same S3 server (S3 store). Target: >= 50% of the baseline.
  Downloads are measured twice on the file store: as they come (the bytes cached after
  the first round, on both sides) and from disk (the page cache of the blob and of the
  baseline's copy dropped before every round);
- every transfer is timed by its tool's own clock (``curl``'s ``time_total``, ``dd``'s
  report), so neither side's process start counts; the note beside each row gives the
  wall-clock rates of the whole commands too;
- the server's RSS during a 1 GiB upload (``--rss-gib 2`` for the issue's 2 GiB): growth
  over its RSS before the upload, sampled every 20 ms. Target: < 100 MiB;
- 1,000 small files in one version: uploaded by one ``curl --parallel``, registered in one
  request, downloaded by one ``curl --parallel``, beside ``cp -r`` of the same files.

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import Row, Table, embedded_nats, parser, postgres
from service.artifacts.blobstore import blob_key
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.s3_server import S3Server, s3_server

MiB = 1024 * 1024
MODEL = "bench"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; their sha256 hex."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def timed(argv: list[str]) -> float:
    """Wall-clock seconds of the whole command, its process start included."""
    return run(argv)[0]


def clocked(argv: list[str]) -> Transfer:
    """Seconds of one transfer by the tool's own clock: ``curl``'s ``time_total`` (from
    the connection to the last byte), ``dd``'s own report (its ``conv=fsync`` included).

    Neither counts its process start, which is neither the server's cost nor the disk's:
    here ``curl`` takes 4-10 ms to start and ``dd`` about 1, against 1-3 ms for a 1 MiB
    transfer through the API, so wall-clock figures for small files measured mostly the
    clients' start (the tables in bench/README.md up to 2026-12-07 did)."""
    wall, out, err = run(argv)
    if argv[0] == "curl":
        return Transfer(float(out.split()[-1]), wall)
    if argv[0] == "dd":
        # Its summary line ends with the seconds it took and its rate, comma-separated.
        return Transfer(float(err.strip().splitlines()[-1].split(", ")[-2].split()[0]), wall)
    raise ValueError(f"no own clock for {argv[0]}")


def dd(source: Path, target: Path | str, *extra: str) -> list[str]:
    return ["dd", f"if={source}", f"of={target}", "bs=1M", *extra]


def fastest(rounds: list[Transfer]) -> Transfer:
    """The best round by each clock (the best by one need not be the best by the other)."""
    return Transfer(min(t.seconds for t in rounds), min(t.wall for t in rounds))


def run(argv: list[str]) -> tuple[float, str, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr[-500:]}")
    return elapsed, done.stdout, done.stderr


@dataclass(frozen=True)
class Transfer:
    """One timed transfer: seconds by ``curl``'s clock, the whole command's wall clock,
    and the CPU seconds the client (``curl``) and the server spent on it, so a slow figure
    says which side was busy (issue 17)."""

    seconds: float
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(argv: list[str], server_pid: int) -> Transfer:
    before, server_before = os.times(), cpu_of(server_pid)
    wall, out, _ = run(argv)
    after, server_after = os.times(), cpu_of(server_pid)
    client = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return Transfer(float(out.split()[-1]), wall, client, server_after - server_before)


def cpu_note(size: int, rounds: list[Transfer]) -> str:
    """CPU seconds per GiB moved, over all rounds (one small round is below the clock
    tick): curl's, and the server's."""
    per_gib = (1024 * MiB) / (size * len(rounds))
    client = sum(t.client_cpu for t in rounds) * per_gib
    server = sum(t.server_cpu for t in rounds) * per_gib
    return f"CPU s/GiB: curl {client:.2f}, server {server:.2f}"


def hash_seconds(path: Path) -> float:
    """How long Python's sha256 (what the server uses) takes over the file's bytes, read
    from the page cache: the ceiling of any re-hashing download."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return time.perf_counter() - start


def curl(*args: str) -> list[str]:
    return ["curl", "-sS", "--fail-with-body", "-o", "/dev/null", "-w", "%{time_total}\n", *args]


def from_disk(path: Path, argv: list[str]) -> Transfer:
    """``clocked(argv)`` with ``path``'s cached pages dropped first: a read from the disk."""
    drop_cache(path)
    return clocked(argv)


def drop_cache(path: Path) -> None:
    """Best effort: writing is what is measured, not the page cache of an earlier read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Registry:
    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.auth = f"Authorization: Bearer {server.admin_token}"
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": self.auth[15:]})
        self.http.post("/api/v1/models", json={"name": MODEL}).raise_for_status()
        self.versions = 0
        self._pid: int | None = None

    def blob_url(self, sha256: str) -> str:
        return f"{self.server.url}/api/v1/models/{MODEL}/blobs/sha256:{sha256}"

    def upload(self, path: Path, sha256: str) -> Transfer:
        return transfer(
            curl(
                "-T",
                str(path),
                "-H",
                self.auth,
                "-H",
                "Content-Type: application/octet-stream",
                self.blob_url(sha256),
            ),
            self.pid(),
        )

    def register(self, files: list[tuple[str, str, int]]) -> int:
        artifacts = [{"path": p, "sha256": h, "size": s} for p, h, s in files]
        answer = self.http.post(
            f"/api/v1/models/{MODEL}/versions", json={"artifacts": artifacts}, timeout=120
        )
        answer.raise_for_status()
        self.versions += 1
        return self.versions

    def blob_path(self, sha256: str) -> Path:
        """Where the file store keeps a blob (the server's data dir holds its log)."""
        return self.server.log.parent / blob_key(sha256)

    def file_url(self, version: int, path: str) -> str:
        return f"{self.server.url}/api/v1/models/{MODEL}/versions/{version}/files/{path}"

    def download(self, version: int, path: str) -> Transfer:
        return transfer(curl("-H", self.auth, self.file_url(version, path)), self.pid())

    def pid(self) -> int:
        """The server process: the ``modelreg serve`` whose environment names our schema."""
        if self._pid is None:
            self._pid = self._find_pid()
        return self._pid

    def _find_pid(self) -> int:
        wanted = f"MODELREG_DB_SCHEMA={self.server.schema}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if wanted in environ and b"serve" in cmdline:
                return int(entry.name)
        raise RuntimeError(f"no modelreg serve runs on schema {self.server.schema}")


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextmanager
def rss_sampler(pid: int) -> Iterator[dict[str, int]]:
    """RSS of ``pid`` before, and its peak while the block runs (sampled every 20 ms)."""
    seen = {"before": rss_of(pid), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], rss_of(pid))
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def rate(size: int, seconds: float) -> float:
    return size / MiB / seconds


def ratio(api: float, base: float) -> str:
    share = api / base
    return f"{share:.0%} {'ok' if share >= 0.5 else 'BELOW 50%'}"


def label(size: int) -> str:
    return f"{size // (1024 * MiB)} GiB" if size >= 1024 * MiB else f"{size // MiB} MiB"


def repeat_for(size: int) -> int:
    """Small files are moved several times: one transfer of 1 MiB is mostly start-up."""
    return max(1, min(20, (64 * MiB) // size))


def downloads_for(size: int) -> int:
    """Downloads need no new bytes, so even big ones are repeated: the first may read from
    disk (the store releases a blob's cached pages once written), the baseline's from cache."""
    return max(3, repeat_for(size))


def file_store_transfers(
    table: Table, registry: Registry, work: Path, sizes: list[int], disk: Path
) -> None:
    for size in sizes:
        rounds = repeat_for(size)
        # Distinct bytes per round: uploading the same bytes again writes nothing (dedup).
        sources = [work / f"src-{size}-{i}" for i in range(rounds)]
        digests = [make_file(source, size) for source in sources]
        log(f"file store, {label(size)}: dd baseline, then upload/download x{rounds}")
        # The store writes every blob to a new file and keeps it, so the baseline does too:
        # on the bench VM, writing into fresh page-cache pages costs several times the CPU
        # of overwriting one file again (whose pages the truncation has just freed), which
        # made the old baseline (one file, overwritten each round) flatter the disk.
        copies = [disk / f"copy-{size}-{i}" for i in range(rounds)]
        base_up = fastest(
            [
                clocked(dd(source, copy, "conv=fsync"))
                for source, copy in zip(sources, copies, strict=True)
            ]
        )
        overwrite = fastest([clocked(dd(source, copies[0], "conv=fsync")) for source in sources])
        base_down = fastest(
            [clocked(dd(copies[0], "/dev/null")) for _ in range(downloads_for(size))]
        )
        base_cold = fastest(
            [from_disk(copies[0], dd(copies[0], "/dev/null")) for _ in range(downloads_for(size))]
        )
        hashing = min(hash_seconds(source) for source in sources)
        for copy in copies:
            copy.unlink()
        ups = [
            registry.upload(source, sha256) for source, sha256 in zip(sources, digests, strict=True)
        ]
        version = registry.register([("model.bin", digests[0], size)])
        downs = [registry.download(version, "model.bin") for _ in range(downloads_for(size))]
        blob = registry.blob_path(digests[0])
        colds = []
        for _ in range(downloads_for(size)):
            drop_cache(blob)
            colds.append(registry.download(version, "model.bin"))
        api_up = fastest(ups)
        upload_row(
            table,
            f"file store upload {label(size)}",
            size,
            api_up,
            base_up,
            "dd conv=fsync, new file",
            f"{cpu_note(size, ups)}; dd overwriting one file: "
            f"{rate(size, overwrite.seconds):,.0f} MiB/s "
            f"({ratio(rate(size, api_up.seconds), rate(size, overwrite.seconds))})",
        )
        upload_row(
            table,
            f"file store download {label(size)}",
            size,
            fastest(downs),
            base_down,
            "dd read",
            f"{cpu_note(size, downs)}; hashlib sha256 alone: {rate(size, hashing):,.0f} MiB/s",
        )
        upload_row(
            table,
            f"file store download {label(size)}, from disk",
            size,
            fastest(colds),
            base_cold,
            "dd read, page cache dropped",
            cpu_note(size, colds),
        )
        for source in sources:
            source.unlink()


def upload_row(
    table: Table, workload: str, size: int, api: Transfer, base: Transfer, what: str, note: str = ""
) -> None:
    """A row by the tools' own clocks; the note adds both sides' rates by the wall clock
    of the whole command (process start included), as the earlier tables had."""
    walls = f"wall clock: {rate(size, api.wall):,.0f} vs {rate(size, base.wall):,.0f} MiB/s"
    table.add(
        Row(
            workload,
            rate(size, api.seconds),
            unit="MiB/s",
            baseline=f"{rate(size, base.seconds):,.0f} MiB/s ({what})",
            ratio=ratio(rate(size, api.seconds), rate(size, base.seconds)),
            note=f"{note}; {walls}" if note else walls,
        )
    )


def s3_transfers(
    table: Table, registry: Registry, s3: S3Server, work: Path, sizes: list[int]
) -> None:
    bucket = s3.new_bucket()
    for size in sizes:
        rounds = repeat_for(size)
        sources = [work / f"src-s3-{size}-{i}" for i in range(rounds)]
        digests = [make_file(source, size) for source in sources]
        log(f"S3 store, {label(size)}: raw PUT/GET baseline, then upload/download x{rounds}")
        # Signed like the registry's own requests (moto answers 403 to most unsigned ones).
        env = s3.env()
        signed = [
            "--aws-sigv4",
            f"aws:amz:{env['AWS_REGION']}:s3",
            "--user",
            f"{env['AWS_ACCESS_KEY_ID']}:{env['AWS_SECRET_ACCESS_KEY']}",
        ]
        raw = [f"{s3.endpoint}/{bucket}/raw-{size}-{i}" for i in range(rounds)]
        base_up = fastest(
            [
                clocked(curl(*signed, "-T", str(source), key))
                for source, key in zip(sources, raw, strict=True)
            ]
        )
        base_down = fastest(
            [clocked(curl(*signed, raw[0])) for _ in range(max(len(raw), downloads_for(size)))]
        )
        ups = [
            registry.upload(source, sha256) for source, sha256 in zip(sources, digests, strict=True)
        ]
        version = registry.register([("model.bin", digests[0], size)])
        downs = [registry.download(version, "model.bin") for _ in range(downloads_for(size))]
        upload_row(
            table,
            f"S3 store upload {label(size)}",
            size,
            fastest(ups),
            base_up,
            "raw S3 PUT",
            cpu_note(size, ups),
        )
        upload_row(
            table,
            f"S3 store download {label(size)}",
            size,
            fastest(downs),
            base_down,
            "raw S3 GET",
            cpu_note(size, downs),
        )
        for source in sources:
            source.unlink()


def rss_during_upload(table: Table, registry: Registry, work: Path, size: int) -> None:
    source = work / "src-rss"
    log(f"file store, RSS during a {label(size)} upload: writing the file")
    sha256 = make_file(source, size)
    drop_cache(source)
    log("  uploading")
    with rss_sampler(registry.pid()) as seen:
        seconds = registry.upload(source, sha256).seconds
    growth = (seen["peak"] - seen["before"]) / MiB
    table.add(
        Row(
            f"server RSS growth, {label(size)} upload",
            growth,
            unit="MiB",
            baseline=f"RSS before: {seen['before'] / MiB:,.0f} MiB",
            ratio="ok (< 100 MiB)" if growth < 100 else "ABOVE 100 MiB",
            note=f"upload at {rate(size, seconds):,.0f} MiB/s",
        )
    )
    source.unlink()


def many_small_files(table: Table, registry: Registry, work: Path, count: int) -> None:
    folder = work / "small"
    folder.mkdir()
    files: list[tuple[str, str, int]] = []
    for i in range(count):
        body = secrets.token_bytes(4096)
        (folder / f"f{i:04d}.bin").write_bytes(body)
        files.append((f"f{i:04d}.bin", hashlib.sha256(body).hexdigest(), len(body)))
    log(f"{count} small files: cp -r baseline, then one parallel curl each way")
    base = timed(["cp", "-r", str(folder), str(work / "small-copy")])
    shutil.rmtree(work / "small-copy")
    config = work / "upload.curl"
    config.write_text(
        "".join(
            f'url = "{registry.blob_url(h)}"\nupload-file = "{folder / p}"\noutput = "/dev/null"\n'
            for p, h, _ in files
        )
    )
    parallel = ["curl", "-sS", "--fail", "-Z", "--parallel-max", "16", "-H", registry.auth]
    upload = timed([*parallel, "-K", str(config)])
    start = time.perf_counter()
    version = registry.register(files)
    register = time.perf_counter() - start
    config.write_text(
        "".join(
            f'url = "{registry.file_url(version, p)}"\noutput = "/dev/null"\n' for p, _, _ in files
        )
    )
    download = timed([*parallel, "-K", str(config)])
    for workload, seconds in (("upload", upload), ("download", download)):
        table.add(
            Row(
                f"{count} small files: {workload}",
                count / seconds,
                unit="files/s",
                baseline=f"{count / base:,.0f} files/s (cp -r)",
                ratio=f"{(count / seconds) / (count / base):.0%}",
                note="16 parallel",
            )
        )
    table.add(
        Row(
            f"{count} small files: register one version",
            None,
            note=f"{register * 1000:,.0f} ms for one request naming {count} stored blobs",
        )
    )


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nats-url", default=os.environ.get("MODELREG_BENCH_NATS_URL"))
    p.add_argument("--quick", action="store_true", help="1 MiB and 100 MiB; 1 GiB RSS run only")
    p.add_argument("--rss-gib", type=int, default=1, help="size of the RSS run's upload (GiB)")
    p.add_argument("--small-files", type=int, default=1000)
    args = p.parse_args()
    sizes = [MiB, 100 * MiB] if args.quick else [MiB, 100 * MiB, 1024 * MiB]
    table = Table("Model files through the API vs raw copies of the same bytes (same run)")
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelreg-bench-")))
        database_url = stack.enter_context(postgres(args.database_url))
        nats_url = args.nats_url or stack.enter_context(embedded_nats(work / "nats"))
        log("starting modelreg serve on the file store")
        with registry_server(database_url, nats_url, work) as server:
            registry = Registry(server)
            file_store_transfers(table, registry, work, sizes, disk=work)
            rss_during_upload(table, registry, work, args.rss_gib * 1024 * MiB)
            many_small_files(table, registry, work, args.small_files)
        log("starting moto's S3 server, and modelreg serve on it")
        s3 = stack.enter_context(s3_server(work / "moto.log"))
        os.environ.update(s3.env())  # the server inherits the AWS_* variables
        bucket = s3.new_bucket()
        with registry_server(
            database_url, nats_url, work, artifacts_url=f"s3://{bucket}/registry"
        ) as server:
            s3_transfers(table, Registry(server), s3, work, sizes)
    table.print(args.json)


if __name__ == "__main__":
    main()
