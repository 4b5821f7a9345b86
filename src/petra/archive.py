"""The Debian archive as the host sees it: indices, package resolution and a .deb cache.

Uses the host's apt with a private configuration (as mmdebstrap does), so the host's own apt
state is never read or written. Downloaded .debs are kept in a store keyed by the archive's
SHA256; a build links the ones it needs into a fresh archives directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from petra.errors import ArchiveError
from petra.reporting import Reporter
from petra.run import run

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
COMPONENTS = "main"


@dataclass(frozen=True)
class Deb:
    """One package file the archive serves."""

    name: str
    version: str
    architecture: str
    filename: str  # apt's file name in /var/cache/apt/archives
    sha256: str
    size: int


class ArchiveFailure(ArchiveError):
    """An ArchiveError that knows which spec key it is about ('mirror', 'suite', 'packages')."""

    def __init__(self, key: str, message: str, hint: str, package: str | None = None) -> None:
        super().__init__(message, hint)
        self.key = key
        self.package = package


class Archive:
    """A mirror + suite + architecture, with its apt indices cached under `cache_dir`."""

    def __init__(self, mirror: str, suite: str, architecture: str, cache_dir: Path) -> None:
        self.mirror = mirror.rstrip("/")
        self.suite = suite
        self.architecture = architecture
        key = hashlib.sha256(f"{self.mirror} {suite} {architecture}".encode()).hexdigest()[:16]
        self.root = cache_dir / "apt" / f"{suite}-{architecture}-{key}"
        self.debs = cache_dir / "debs"

    # --- configuration ---------------------------------------------------------------------

    @property
    def sources_line(self) -> str:
        """The sources.list line mmdebstrap and the tree use (same URI ⇒ same list file names)."""
        return f"deb {self.mirror} {self.suite} {COMPONENTS}"

    @property
    def lists_dir(self) -> Path:
        return self.root / "lists"

    def _setup(self, exclude: tuple[str, ...]) -> Path:
        etc = self.root / "etc"
        for d in (
            etc / "apt.conf.d",
            etc / "preferences.d",
            etc / "sources.list.d",
            etc / "trusted.gpg.d",
            self.lists_dir / "partial",
            self.root / "cache",
            self.root / "log",
        ):
            d.mkdir(parents=True, exist_ok=True)
        signed = f"deb [signed-by={KEYRING}] {self.mirror} {self.suite} {COMPONENTS}\n"
        _write_if_changed(etc / "sources.list", signed)
        _write_if_changed(
            etc / "preferences.d" / "petra-exclude.pref", exclude_preferences(exclude)
        )
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        conf = self.root / "apt.conf"
        _write_if_changed(
            conf,
            "\n".join(
                [
                    f'Dir::Etc "{etc}";',
                    f'Dir::Etc::Parts "{etc}/apt.conf.d";',
                    f'Dir::Etc::SourceParts "{etc}/sources.list.d";',
                    f'Dir::Etc::TrustedParts "{etc}/trusted.gpg.d";',
                    f'Dir::Etc::PreferencesParts "{etc}/preferences.d";',
                    f'Dir::State "{self.root}";',
                    f'Dir::State::Lists "{self.lists_dir}";',
                    f'Dir::State::status "{status}";',
                    f'Dir::Cache "{self.root}/cache";',
                    f'Dir::Log "{self.root}/log";',
                    f'APT::Architecture "{self.architecture}";',
                    f'APT::Architectures "{self.architecture}";',
                    'APT::Install-Recommends "false";',
                    'APT::Get::Assume-Yes "true";',
                    'Acquire::Languages "none";',
                    'Acquire::ForceHash "SHA256";',
                    'APT::Sandbox::User "root";',
                    'Acquire::Retries "2";',
                    'Acquire::http::Timeout "20";',
                    "",
                ]
            ),
        )
        return conf

    # --- operations ------------------------------------------------------------------------

    @property
    def tree_cache_dir(self) -> Path:
        """Where a tree's own apt keeps its parsed copy of these indices (srcpkgcache.bin)."""
        return self.root / "tree-cache"

    def tree_sources_list(self) -> Path:
        """A sources.list for a tree's own apt, rewritten only when it changes: apt trusts its
        parsed index (tree_cache_dir) only while it is older than every sources.list."""
        path = self.root / "tree-sources.list"
        _write_if_changed(path, self.sources_line + "\n")
        return path

    def updated_ago(self) -> float | None:
        """Seconds since the indices were last fetched, or None if never."""
        try:
            return time.time() - (self.root / "updated").stat().st_mtime
        except FileNotFoundError:
            return None

    def refresh(self, reporter: Reporter, max_age: float = 0.0) -> bool:
        """Fetch the indices unless they were fetched less than `max_age` seconds ago; with the
        mirror unreachable, the cached ones do. Returns True if a fetch was skipped because the
        index was recent (so one now might still change it).

        Raises ArchiveFailure for an unknown suite, and for an unreachable mirror when no
        index is cached.
        """
        cached = any(self.lists_dir.glob("*_Packages*"))
        age = self.updated_ago()
        if cached and age is not None and 0 <= age < max_age:
            reporter.step("archive", f"package index fetched {age / 60:.0f} min ago")
            return True
        reporter.step("archive", f"{self.mirror} {self.suite}")
        try:
            self.update()
        except ArchiveFailure as e:
            if e.key != "mirror" or not cached:
                raise
            reporter.step("archive", f"{e.message}; using the cached package index")
        return False

    def update(self, reporter: Reporter | None = None) -> None:
        """Fetch (or refresh) the suite's indices.

        Raises ArchiveFailure with key 'mirror' when the mirror cannot be reached and 'suite'
        when the mirror has no such suite. Nothing outside the cache is touched.
        """
        conf = self._setup(())
        env = {"APT_CONFIG": str(conf), "LC_ALL": "C.UTF-8"}
        proc = run(["apt-get", "update", "--error-on=any"], env=env, check=False)
        if proc.returncode == 0:
            (self.root / "updated").touch()
            return
        out = proc.stdout + proc.stderr
        if re.search(
            r"Could not connect|Could not resolve|Temporary failure resolving|"
            r"Connection refused|Connection timed out|No route to host|"
            r"Failed to fetch file:|Unable to connect",
            out,
        ):
            raise ArchiveFailure(
                "mirror",
                f"mirror {self.mirror} is unreachable",
                "check the mirror URL and the network",
            )
        if re.search(r"does not have a Release file|404\s+Not Found", out):
            raise ArchiveFailure(
                "suite",
                f"suite '{self.suite}' not found at {self.mirror}",
                "use a Debian suite such as trixie or bookworm",
            )
        last = [ln for ln in out.splitlines() if ln.startswith(("E:", "W:"))] or ["apt-get failed"]
        raise ArchiveFailure(
            "mirror", f"cannot read {self.mirror} {self.suite}: {last[-1]}", "check the mirror URL"
        )

    def resolve(self, packages: list[str], exclude: tuple[str, ...]) -> list[Deb]:
        """The full package set of a minbase root with `packages` (what mmdebstrap installs).

        Raises ArchiveFailure(key='packages', package=NAME) for an unknown package, and one
        naming the conflict for a set apt cannot install together or that needs an excluded one.
        """
        conf = self._setup(exclude)
        env = {"APT_CONFIG": str(conf), "LC_ALL": "C.UTF-8"}
        # mmdebstrap minbase: Essential:yes + Priority:required + apt
        wanted = ["?essential", "?priority(required)", "apt", *packages]
        proc = run(["apt-get", "install", "--print-uris", "-qq", *wanted], env=env, check=False)
        if proc.returncode != 0:
            raise self._resolution_failure(proc.stdout + proc.stderr, packages, exclude)
        debs = [parse_uri_line(line) for line in proc.stdout.splitlines() if line.startswith("'")]
        debs.sort(key=lambda d: d.name)
        bad = [d.name for d in debs if d.name in exclude]
        if bad:
            raise ArchiveFailure(
                "exclude-packages",
                f"excluded package {bad[0]} is required",
                "it is Essential or needed by a listed package",
            )
        return debs

    def _resolution_failure(
        self, out: str, packages: list[str], exclude: tuple[str, ...]
    ) -> ArchiveFailure:
        unknown = re.search(r"Unable to locate package (\S+)", out)
        if unknown:
            name = unknown.group(1)
            return ArchiveFailure(
                "packages",
                f"packages: no package '{name}' in {self.suite}",
                "check the name with apt-cache search",
                package=name,
            )
        nocand = re.search(r"Package '?([^' ]+)'? has no installation candidate", out)
        if nocand:
            name = nocand.group(1)
            hint = (
                "it is listed in exclude-packages"
                if name in exclude
                else "it is a virtual package: name one that provides it"
            )
            return ArchiveFailure(
                "packages", f"packages: '{name}' cannot be installed", hint, package=name
            )
        broken = re.findall(
            r"^\s*(\S+) : (?:Depends|PreDepends|Conflicts|Breaks): (.+)$", out, flags=re.MULTILINE
        )
        if broken:
            pkg, why = broken[0]
            return ArchiveFailure(
                "packages",
                f"packages: {pkg} cannot be installed: {why.strip()}",
                "remove the conflicting package or an exclusion",
            )
        last = [ln for ln in out.splitlines() if ln.startswith("E:")] or ["apt-get failed"]
        return ArchiveFailure("packages", f"packages: {last[-1]}", "check the package list")

    def fetch(
        self, debs: list[Deb], dest: Path, reporter: Reporter, status: Path | None = None
    ) -> int:
        """Put every deb of `debs` into `dest` (apt's file names), downloading only what the
        store lacks. `status`: the dpkg status of the tree they go into (so apt does not fetch
        what it already has). Returns the number downloaded. Raises ArchiveError if a download
        fails.
        """
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "partial").mkdir(exist_ok=True)
        self.debs.mkdir(parents=True, exist_ok=True)
        missing = []
        for deb in debs:
            if not deb.sha256:
                raise ArchiveError(f"no SHA256 for {deb.filename} in the index", "rerun")
            stored = self.debs / f"{deb.sha256}.deb"
            if stored.exists():
                _link_or_copy(stored, dest / deb.filename)
            else:
                missing.append(deb)
        if missing:
            conf = self._setup(())
            env = {"APT_CONFIG": str(conf), "LC_ALL": "C.UTF-8"}
            names = [f"{d.name}={d.version}" for d in missing]
            proc = run(
                [
                    "apt-get",
                    "install",
                    "--download-only",
                    "-q",
                    f"-oDir::Cache::Archives={dest}",
                    *([f"-oDir::State::status={status}"] if status else []),
                    *names,
                ],
                env=env,
                check=False,
                reporter=reporter,
            )
            if proc.returncode != 0:
                raise ArchiveError(
                    f"download from {self.mirror} failed",
                    "check the network; rerun to resume (finished .debs are kept)",
                )
            for deb in missing:
                got = dest / deb.filename
                if not got.exists():
                    raise ArchiveError(f"apt did not download {deb.filename}", "rerun the compose")
                _link_or_copy(got, self.debs / f"{deb.sha256}.deb", atomic=True)
        return len(missing)


def exclude_preferences(exclude: tuple[str, ...]) -> str:
    """apt preferences that forbid the excluded packages (apt then picks alternatives)."""
    return "".join(f"Package: {p}\nPin: release *\nPin-Priority: -1\n\n" for p in exclude)


def newest_build_time(paths: list[Path]) -> int:
    """The newest `ar` member time over .deb files: the build date of the newest package.

    Deterministic for a given set of package versions, so it serves as SOURCE_DATE_EPOCH.
    """
    newest = 0
    for path in paths:
        with path.open("rb") as f:
            head = f.read(8 + 60)
        if len(head) == 68 and head.startswith(b"!<arch>\n"):
            with_time = head[8 + 16 : 8 + 28].strip()
            if with_time.isdigit():
                newest = max(newest, int(with_time))
    return newest


def parse_uri_line(line: str) -> Deb:
    """A Deb from one line of `apt-get install --print-uris`."""
    # 'http://…/pool/main/a/apt/apt_2.9_amd64.deb' apt_2.9_amd64.deb 1234 SHA256:abc…
    parts = line.split()
    filename, size, digest = parts[1], int(parts[2]), parts[3]
    name, version, arch = urllib.parse.unquote(filename.removesuffix(".deb")).split("_")
    sha = digest.split(":", 1)[1] if digest.upper().startswith("SHA256:") else ""
    return Deb(name, version, arch, filename, sha, size)


def _link_or_copy(src: Path, dst: Path, atomic: bool = False) -> None:
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp") if atomic else dst
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    if atomic:
        os.replace(tmp, dst)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
