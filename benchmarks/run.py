"""`make bench`: compose figures against plain mmdebstrap, measured in one run on this machine.

Prints: cold compose of examples/server.toml vs plain mmdebstrap of the same package set (both
downloading from the same mirror), recompose after adding one small package (ratio to cold),
repo size and file count.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from petra.compose.rootfs import requested_packages  # noqa: E402
from petra.spec import load_spec  # noqa: E402

SPEC = ROOT / "examples" / "server.toml"
SMALL_PACKAGE = "tree"


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> None:
    spec = load_spec(SPEC)
    packages = requested_packages(spec) + (["passwd"] if spec.users else [])
    petra = [sys.executable, "-m", "petra"]
    with tempfile.TemporaryDirectory(prefix="petra-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        print(f"bench: {SPEC.name}, {len(packages)} requested packages, mirror {spec.mirror}")

        plain, _ = timed(["mmdebstrap", "--variant=minbase", "--mode=root", "-q",
                          "--aptopt=APT::Install-Recommends \"false\"",
                          "--include=" + ",".join(packages), spec.suite,
                          str(work / "plain"), spec.mirror])  # fmt: skip
        shutil.rmtree(work / "plain")

        cache, repo = work / "cache", work / "repo"
        cold, out = timed([*petra, "compose", str(SPEC), "--repo", str(repo), "--cache",
                           str(cache), "--quiet", "--json"])  # fmt: skip
        first = json.loads(out)

        variant = work / "variant.toml"
        variant.write_text(
            textwrap.dedent(f"""
            include = ["{SPEC}"]
            name = "server"
            version = "bench"
            packages = ["{SMALL_PACKAGE}"]
        """)
        )
        warm, out = timed([*petra, "compose", str(variant), "--repo", str(repo), "--cache",
                           str(cache), "--quiet", "--json"])  # fmt: skip
        second = json.loads(out)
        show = json.loads(timed([*petra, "show", "--repo", str(repo), first["commit"],
                                 "--json"])[1])  # fmt: skip
        repo_size = du(repo)

    rows = [
        ("plain mmdebstrap, same packages", f"{plain:.1f} s", ""),
        ("petra compose, cold (empty cache)", f"{cold:.1f} s",
         f"{cold / plain:.2f}x mmdebstrap (target <= 1.25x)"),
        (f"recompose + {SMALL_PACKAGE} ({second['build']})", f"{warm:.1f} s",
         f"{warm / cold:.2f}x cold (target <= 0.35x)"),
        ("repo size after both commits", f"{repo_size / 1e6:.0f} MB", ""),
        ("files and dirs in the commit", f"{show['file-count']}",
         f"{show['size'] / 1e6:.0f} MB of file data"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>9}  {note}")


if __name__ == "__main__":
    main()
