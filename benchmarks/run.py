"""`make bench`: figures measured in one run on this machine, against the baseline tools.

Compose: cold compose of examples/server.toml vs plain mmdebstrap of the same package set (both
downloading from the same mirror), recompose after adding one small package (ratio to cold),
repo size and file count.
Device: deploy (vs `ostree admin deploy` of the same commit), upgrade of a one-package change
(pull + deploy), rollback of the server tree and of the small minimal tree, the disk cost of the
second deployment, `petra verify` against `ostree fsck` of the same repo, the disk cost of five
deployments of commits one package apart, and the thaw guard's cost per command.
Layering: `petra install htop` (already downloaded) on the deployed server tree, split into
prepare, apt/dpkg, commit and deploy, against apt-get install in a plain copy of the tree.
Boxes: `petra box create` cold (vs plain mmdebstrap of the same packages) and warm, and `petra
box run -- /bin/true` and an exported launcher of /bin/true against bare bwrap.
Boot: `petra image build` of the server commit (time, disk and used size), and `petra vm run --
true` under TCG: qemu start to the command's result and to power-off, with the boot's milestones
as the console shows them; which accelerator `--accel auto` picks on this machine.

Everything is written to a loop-mounted file system made for the run, in the run's own mount
namespace (NOTES.md, "READ FIRST"): a sysroot write never touches the machine's own file system.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from petra import health, vm  # noqa: E402
from petra.compose.rootfs import requested_packages  # noqa: E402
from petra.freeze import thaw_guard  # noqa: E402
from petra.reporting import SilentReporter  # noqa: E402
from petra.spec import load_spec  # noqa: E402

SPEC = ROOT / "examples" / "server.toml"
SMALL_PACKAGE = "tree"
LAYER_PACKAGE = "htop"
Row = tuple[str, str, str]


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        print(f"bench: {' '.join(argv)} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        sys.exit(1)
    return seconds, proc.stdout


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def disk_usage(path: Path) -> int:
    """Bytes on disk under `path`, each hardlinked inode counted once."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


def run_fs(where: Path) -> Path:
    """A fresh loop-mounted ext4 at `where`, in this process's private mount namespace."""
    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        sys.exit(f"bench: unshare: {os.strerror(ctypes.get_errno())} (run it as root)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    image, mountpoint = where / "fs.img", where / "fs"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "24G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    image.unlink()
    return mountpoint


def release_fs(mountpoint: Path) -> None:
    """Thaw (unmounting a frozen file system can hang), then unmount; thaw guards that have
    not exited yet may hold it for a moment, so detach it lazily if it is still busy."""
    subprocess.run(["fsfreeze", "-u", str(mountpoint)], capture_output=True, check=False)
    for _ in range(10):
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def with_kernel_of(repo: Path, commit: str, ref: str, kernel_repo: Path, kernel: str,
                   scratch: Path) -> None:  # fmt: skip
    """`commit` (a tree without a kernel: ostree deploys only trees with one) plus the kernel
    and initramfs of `kernel`, committed as `ref`. With the same kernel as the server tree,
    the two rollbacks differ only in tree size (libostree hashes the kernel on every write)."""
    tree = scratch / "minimal-tree"
    subprocess.run(["ostree", f"--repo={repo}", "checkout", "-H", commit, str(tree)], check=True)
    kver = subprocess.run(["ostree", f"--repo={kernel_repo}", "show", kernel,
                           "--print-metadata-key=ostree.linux"], capture_output=True, text=True,
                          check=True).stdout.strip().strip("'")  # fmt: skip
    (tree / "usr/lib/modules").mkdir(parents=True, exist_ok=True)
    subprocess.run(["ostree", f"--repo={kernel_repo}", "checkout", "-H",
                    f"--subpath=/usr/lib/modules/{kver}", kernel,
                    str(tree / f"usr/lib/modules/{kver}")], check=True)  # fmt: skip
    subprocess.run(["ostree", f"--repo={repo}", "commit", "--link-checkout-speedup",
                    f"--branch={ref}", f"--tree=dir={tree}", "--subject=bench: + kernel"],
                   check=True, capture_output=True)  # fmt: skip


def rollback_seconds(petra: list[str], sysroot: Path, rounds: int = 5) -> float:
    return statistics.median(
        timed([*petra, "rollback", "--sysroot", str(sysroot), "-q"])[0] for _ in range(rounds)
    )


def device_rows(petra: list[str], work: Path, repo: Path, first: str, cache: Path) -> list[Row]:
    ref = subprocess.run(["ostree", f"--repo={repo}", "refs"], capture_output=True, text=True,
                         check=True).stdout.split()[0]  # fmt: skip
    # baseline: libostree's own CLI, pull + deploy of the same commit into a fresh sysroot
    base = work / "ostree-sysroot"
    base.mkdir()
    subprocess.run(["ostree", "admin", "init-fs", "--modern", str(base)], check=True)
    subprocess.run(["ostree", "admin", f"--sysroot={base}", "os-init", "petra"], check=True)
    start = time.monotonic()
    subprocess.run(["ostree", f"--repo={base}/ostree/repo", "pull-local", str(repo), first],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["ostree", "admin", f"--sysroot={base}", "deploy", "--os=petra", first],
                   check=True, capture_output=True)  # fmt: skip
    baseline = time.monotonic() - start

    sysroot = work / "sysroot"
    timed([*petra, "init", "--sysroot", str(sysroot)])
    deploy_s, _ = timed([*petra, "deploy", "--sysroot", str(sysroot), "--repo", str(repo), first])
    one = disk_usage(sysroot)
    upgrade_s, _ = timed([*petra, "upgrade", "--sysroot", str(sysroot), "-q"])
    two = disk_usage(sysroot)
    server_rb = rollback_seconds(petra, sysroot)
    # verify (both deployments' /usr, by content) against ostree fsck of the same repo, warm
    fsck_s = statistics.median(
        timed(["ostree", "fsck", f"--repo={sysroot}/ostree/repo"])[0] for _ in range(3)
    )
    verify_s = statistics.median(
        timed([*petra, "verify", "--sysroot", str(sysroot)])[0] for _ in range(3)
    )

    small_repo = work / "minimal-repo"
    _, out = timed([*petra, "compose", str(ROOT / "examples/minimal.toml"), "--repo",
                    str(small_repo), "--cache", str(cache), "--quiet", "--json"])  # fmt: skip
    small_commit = json.loads(out)["commit"]
    with_kernel_of(small_repo, small_commit, "bench/minimal", repo, first, work)
    small = work / "minimal-sysroot"
    timed([*petra, "init", "--sysroot", str(small)])
    # Two commits with two versions, as on the server sysroot: the version is in each bootloader
    # entry's title, so a reorder rewrites the entries (and libostree re-reads the kernel).
    for n in range(2):
        subprocess.run(["ostree", f"--repo={small_repo}", "commit", "--branch=bench/minimal",
                        "--tree=ref=bench/minimal", f"--subject=bench {n}",
                        f"--add-metadata-string=version=bench.{n}"], check=True,
                       capture_output=True)  # fmt: skip
        timed([*petra, "deploy", "--sysroot", str(small), "--repo", str(small_repo),
               "bench/minimal"])  # fmt: skip
    small_rb = rollback_seconds(petra, small)

    guard_dir = work / "guard"
    guard_dir.mkdir()
    rounds, costs = 30, []
    for _ in range(rounds):
        start = time.perf_counter()
        with thaw_guard(guard_dir):
            pass
        costs.append(time.perf_counter() - start)
        time.sleep(0.05)  # let that guard exit, as it does between two commands
    guard_ms = statistics.median(costs) * 1000
    return [
        (f"petra deploy ({ref}, pull + deploy)", f"{deploy_s:.1f} s",
         f"{deploy_s / baseline:.2f}x ostree pull-local + admin deploy ({baseline:.1f} s)"),
        ("petra upgrade, one-package change", f"{upgrade_s:.1f} s", "pull + deploy"),
        ("petra rollback, server tree", f"{server_rb:.2f} s", "median of 5 (goal < 1 s)"),
        ("petra rollback, minimal tree", f"{small_rb:.2f} s",
         f"same kernel; {small_rb / server_rb:.2f}x the server tree (goal: the same)"),
        ("disk cost of the second deployment", f"{(two - one) / one * 100:.1f} %",
         f"{(two - one) / 1e6:.0f} MB over {one / 1e6:.0f} MB (goal <= 5 %)"),
        ("petra verify, both deployments", f"{verify_s:.1f} s",
         f"median of 3; {verify_s / fsck_s:.2f}x ostree fsck of the sysroot's repo "
         f"({fsck_s:.1f} s)"),
        ("thaw guard per command", f"{guard_ms:.1f} ms", f"median of {rounds}: start, all clear"),
    ]  # fmt: skip


CHAIN = ("tree", "bc", "lsof", "htop")  # one more package in each commit of the chain


def chain_rows(petra: list[str], work: Path, repo: Path, first: str, cache: Path) -> list[Row]:
    """The disk cost of 5 deployments (--keep 5) of commits one package apart: the server
    commit, then the same spec with one more package of CHAIN each time."""
    commits = [first]
    for n in range(1, len(CHAIN) + 1):
        spec = work / f"chain-{n}.toml"
        packages = ", ".join(f'"{p}"' for p in CHAIN[:n])
        spec.write_text(f'include = ["{SPEC}"]\nversion = "chain.{n}"\npackages = [{packages}]\n')
        _, out = timed([*petra, "compose", str(spec), "--repo", str(repo), "--cache", str(cache),
                        "--quiet", "--json"])  # fmt: skip
        commits.append(json.loads(out)["commit"])
    sysroot = work / "chain-sysroot"
    timed([*petra, "init", "--sysroot", str(sysroot), "--keep", str(len(commits))])
    sizes = []
    for commit in commits:
        timed([*petra, "deploy", "--sysroot", str(sysroot), "--repo", str(repo), commit, "-q"])
        sizes.append(disk_usage(sysroot))
    extra = [b - a for a, b in itertools.pairwise(sizes)]
    worst = max(extra) / sizes[0] * 100
    each = ", ".join(f"{e / 1e6:.0f}" for e in extra)
    return [
        (f"disk cost of {len(commits)} deployments one package apart", f"{worst:.1f} %",
         f"the largest extra one; each: {each} MB over {sizes[0] / 1e6:.0f} MB "
         "(goal <= 5 % each)"),
    ]  # fmt: skip


def layering_rows(petra: list[str], work: Path, repo: Path, first: str, cache: Path) -> list[Row]:
    """`petra install htop` on the deployed server tree (htop already downloaded), with its
    breakdown, against `apt-get install htop` in a plain copy of the same tree (same binds)."""
    sysroot = work / "layer-sysroot"
    timed([*petra, "init", "--sysroot", str(sysroot)])
    timed([*petra, "deploy", "--sysroot", str(sysroot), "--repo", str(repo), first])
    where = ["--sysroot", str(sysroot), "--cache", str(cache)]
    timed([*petra, "install", LAYER_PACKAGE, *where, "-q"])  # downloads it into the cache
    timed([*petra, "uninstall", LAYER_PACKAGE, *where, "-q"])
    start = time.monotonic()
    proc = subprocess.run([*petra, "install", LAYER_PACKAGE, *where], capture_output=True,
                          text=True, check=True)  # fmt: skip
    total = time.monotonic() - start
    split = dict(re.findall(r"(prepare|apt|commit) ([0-9.]+) s", proc.stderr))
    deploy = total - sum(float(v) for v in split.values())

    # The baseline: apt in a plain copy of the deployed tree, /var made as tmpfiles.d would.
    tree = sorted(sysroot.glob(f"ostree/deploy/*/deploy/{first}.*"))[0]  # the base, deployed
    plain = work / "plain-tree"
    subprocess.run(["cp", "-a", str(tree), str(plain)], check=True)
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={plain}", "--prefix=/var"],
                   capture_output=True, check=False)  # fmt: skip
    archives = work / "plain-archives"
    (archives / "partial").mkdir(parents=True)
    for deb in (cache / "debs").glob("*.deb"):
        fields = subprocess.run(["dpkg-deb", "--field", str(deb), "Package", "Version",
                                 "Architecture"], capture_output=True, text=True,
                                check=True).stdout.split()  # fmt: skip
        if fields[1] == LAYER_PACKAGE:  # "Package: htop Version: … Architecture: …"
            version = fields[3].replace(":", "%3a")
            shutil.copy(deb, archives / f"{LAYER_PACKAGE}_{version}_{fields[5]}.deb")
    [lists] = (cache / "apt").glob("*/lists")
    bwrap = ["bwrap", "--bind", str(plain), "/", "--dev", "/dev", "--proc", "/proc",
             "--tmpfs", "/run", "--tmpfs", "/tmp", "--bind", str(lists), "/var/lib/apt/lists",
             "--bind", str(archives), "/var/cache/apt/archives", "--unshare-net", "--"]  # fmt: skip
    # As on a running Debian system, apt's parsed index (pkgcache.bin) is already built.
    timed([*bwrap, "apt-get", "-q", "check"])
    baseline, _ = timed([*bwrap, "apt-get", "install", "-y", "--no-download",
                         "-oAPT::Install-Recommends=false", "-oDPkg::Options::=--force-unsafe-io",
                         LAYER_PACKAGE])  # fmt: skip
    subprocess.run(["rm", "-rf", "--one-file-system", str(plain)], check=False)
    parts = ", ".join(f"{k} {float(v):.1f} s" for k, v in split.items())
    return [
        (f"petra install {LAYER_PACKAGE} (cached), server tree", f"{total:.1f} s",
         f"{parts}, deploy {deploy:.1f} s; {total / baseline:.1f}x apt-get install in a plain "
         f"copy, its apt cache warm ({baseline:.1f} s) (goal <= 10 s, moonshot <= 3 s)"),
    ]  # fmt: skip


def box_rows(petra: list[str], work: Path, suite: str, mirror: str) -> list[Row]:
    """Box creation cold (an empty cache: it downloads, as plain mmdebstrap of the same
    packages does) and warm (a second box of the suite), and `petra box run -- /bin/true`
    against bare bwrap with the same namespaces and root."""
    sysroot = work / "layer-sysroot"  # boxes live in a sysroot's /var
    plain, _ = timed(["mmdebstrap", "--variant=minbase", "--mode=root", "-q", suite,
                      str(work / "plain-box"), mirror])  # fmt: skip
    shutil.rmtree(work / "plain-box")
    where = ["--sysroot", str(sysroot), "--cache", str(work / "box-cache"), "-q"]
    cold, _ = timed([*petra, "box", "create", "first", "--suite", suite, *where])
    warm, _ = timed([*petra, "box", "create", "second", "--suite", suite, *where])
    root = next(sysroot.glob("ostree/deploy/*/var/lib/petra/boxes/second/root"))
    bare = ["bwrap", "--bind", str(root), "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--", "/bin/true"]  # fmt: skip
    box = [*petra, "box", "run", "--sysroot", str(sysroot), "second", "--", "/bin/true"]
    home = work / "box-home"  # `petra box export second true`: ~/.local/bin/true, a launcher
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    subprocess.run([*petra, "box", "export", "--sysroot", str(sysroot), "second", "true"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    launcher = [str(home / ".local/bin/true")]
    bare_s = statistics.median(timed(bare)[0] for _ in range(20))
    box_s = statistics.median(timed(box)[0] for _ in range(20))
    launcher_s = statistics.median(timed(launcher, env)[0] for _ in range(20))
    return [
        ("petra box create, cold (empty cache)", f"{cold:.1f} s",
         f"{cold / plain:.2f}x plain mmdebstrap of the same packages ({plain:.1f} s)"),
        ("petra box create, warm (second box of the suite)", f"{warm:.1f} s", "goal <= 5 s"),
        ("petra box run -- /bin/true", f"{box_s * 1000:.0f} ms",
         f"median of 20; {box_s / bare_s:.0f}x bare bwrap ({bare_s * 1000:.1f} ms) "
         "(goal <= 1.5x)"),
        ("exported launcher (petra box export) of /bin/true", f"{launcher_s * 1000:.1f} ms",
         f"median of 20; {launcher_s / bare_s:.2f}x bare bwrap (goal <= 1.5x)"),
    ]  # fmt: skip


def boot_rows(petra: list[str], work: Path, repo: Path, first: str) -> list[Row]:
    """The image of the first commit (it follows the ref, which the recompose moved on), booted
    twice, then upgraded from inside through the shared repo."""
    disk = work / "server.img"
    build_s, out = timed([*petra, "image", "build", "--repo", str(repo), first, "-o", str(disk),
                          "--quiet"])  # fmt: skip
    sizes = out.strip().split(": ", 1)[1]
    overlay = work / "boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw",
                    str(overlay)], check=True)  # fmt: skip
    # The first boot of a disk makes SSH host keys and the machine-id; the second is a reboot.
    machine = vm.Machine(overlay, accel="tcg")
    runs = [vm.run_command(machine, ["true"], SilentReporter(), timeout=900) for _ in range(2)]
    timed_upgrade = 'a=$(date +%s.%N); petra upgrade -q >/dev/null; b=$(date +%s.%N); echo "$a $b"'
    shared = vm.Machine(overlay, share=repo, accel="tcg")
    upgrade = vm.run_command(shared, ["sh", "-c", timed_upgrade], SilentReporter(), timeout=900)
    began, ended = map(float, upgrade.output.split()[-2:])
    auto = vm.choose_accel(vm.Machine(overlay), SilentReporter())
    rows: list[Row] = [("petra image build (server)", f"{build_s:.1f} s", sizes)]
    rows += rollback_rows(petra, work, repo, disk)
    for name, run in zip(("first boot", "reboot"), runs, strict=True):
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in run.milestones.items())
        note = f"power-off at {run.exit_seconds:.0f} s; {phases} (goal <= 20 s)"
        rows.append((f"qemu start -> `true` done, {name} (TCG)", f"{run.result_seconds:.1f} s",
                     note))  # fmt: skip
    rows.append(("petra upgrade inside the VM (TCG)", f"{ended - began:.1f} s",
                 "one-package change, pulled from the 9p share"))  # fmt: skip
    rows.append(("`vm run --accel auto` picks", auto, "kvm only if a probe boot shows the kernel"))
    return rows


def rollback_rows(petra: list[str], work: Path, repo: Path, disk: Path) -> list[Row]:
    """A bad update (its required health check fails; the default 3 attempts) upgraded to
    inside the VM, then the machine powered on: the time until the previous deployment runs a
    command again, on its own."""
    spec = work / "broken.toml"
    spec.write_text(f'include = ["{SPEC}"]\nversion = "broken"\n'
                    '[health.required]\nbench = "false"\n')  # fmt: skip
    timed([*petra, "compose", str(spec), "--repo", str(repo), "--cache", str(work / "cache"),
           "--quiet"])  # fmt: skip
    overlay = work / "rollback.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "raw",
                    str(overlay)], check=True)  # fmt: skip
    shared = vm.Machine(overlay, share=repo, accel="tcg")
    vm.run_command(shared, ["petra", "upgrade", "-q"], SilentReporter(), timeout=900)
    back = vm.run_command(shared, ["petra", "status"], SilentReporter(), timeout=1800)
    assert "automatic rollback" in back.output, back.output
    return [("bad update -> good deployment running again (TCG)", f"{back.result_seconds:.0f} s",
             f"{back.boots} boots: {health.DEFAULT_ATTEMPTS} failed attempts, then GRUB's "
             "fallback; from power-on")]  # fmt: skip


def main() -> None:
    spec = load_spec(SPEC)
    packages = requested_packages(spec) + (["passwd"] if spec.users else [])
    petra = [sys.executable, "-m", "petra"]
    with tempfile.TemporaryDirectory(prefix="petra-bench-", dir="/var/tmp") as tmp:
        mountpoint = run_fs(Path(tmp))
        try:
            rows = measure(spec.suite, spec.mirror, packages, petra, mountpoint)
        finally:
            release_fs(mountpoint)
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>9}  {note}")


def measure(
    suite: str, mirror: str, packages: list[str], petra: list[str], work: Path
) -> list[Row]:
    print(f"bench: {SPEC.name}, {len(packages)} requested packages, mirror {mirror}")

    plain, _ = timed(["mmdebstrap", "--variant=minbase", "--mode=root", "-q",
                      "--aptopt=APT::Install-Recommends \"false\"",
                      "--include=" + ",".join(packages), suite,
                      str(work / "plain"), mirror])  # fmt: skip
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

    rows: list[Row] = [
        ("plain mmdebstrap, same packages", f"{plain:.1f} s", ""),
        ("petra compose, cold (empty cache)", f"{cold:.1f} s",
         f"{cold / plain:.2f}x mmdebstrap (target <= 1.25x)"),
        (f"recompose + {SMALL_PACKAGE} ({second['build']})", f"{warm:.1f} s",
         f"{warm / cold:.2f}x cold (target <= 0.35x)"),
        ("repo size after both commits", f"{repo_size / 1e6:.0f} MB", ""),
        ("files and dirs in the commit", f"{show['file-count']}",
         f"{show['size'] / 1e6:.0f} MB of file data"),
    ]  # fmt: skip
    rows += device_rows(petra, work, repo, first["commit"], cache)
    rows += chain_rows(petra, work, repo, first["commit"], cache)
    rows += layering_rows(petra, work, repo, first["commit"], cache)
    rows += box_rows(petra, work, suite, mirror)
    return rows + boot_rows(petra, work, repo, first["commit"])


if __name__ == "__main__":
    main()
