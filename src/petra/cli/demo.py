"""petra demo: the whole story on the built-in default spec, non-interactively.

compose → deploy into a sysroot → status → enter (a write to /usr is refused) → compose a new
version with one more package → upgrade → status → rollback → status → layer the package onto
the rolled-back default → status → a box of Debian bookworm, a command run in it → build a
disk image of the ref → boot it in qemu and run `petra status` inside → an update whose health
check fails, rolled back by GRUB and petra on their own.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from petra import box, image, inspect, layering, vm
from petra import sysroot as device
from petra.cli import box as box_cli
from petra.cli.device import print_status
from petra.cli.output import human_size, reporter_for
from petra.compose import compose
from petra.compose.cache import default_cache_dir
from petra.ostree import Repo, Sysroot
from petra.reporting import Reporter
from petra.spec import FALLBACK_MIRROR, host_architecture, load_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
EXTRA_PACKAGE = "htop"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="the whole story on the default spec")
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where the demo writes")
    p.add_argument("--spec", type=Path, default=EXAMPLES / "server.toml")
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n### {text}", flush=True)


def _shell(line: str) -> None:
    print(f"$ {line}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    reporter = reporter_for(args)
    workdir = args.workdir.absolute()
    repo_path = workdir / "repo"
    cache = args.cache or default_cache_dir()

    _say(f"compose {args.spec} into {repo_path}")
    spec = load_spec(args.spec)
    result = compose(spec, repo_path, cache_dir=cache, reporter=reporter)
    print(f"ref:    {result.ref}")
    print(f"commit: {result.checksum}")
    _describe(Repo.open(repo_path), result.checksum, result.ref)

    sysroot_path = workdir / "sysroot"
    _say(f"deploy it into the sysroot {sysroot_path}")
    if not Sysroot.is_sysroot(sysroot_path):
        device.init(sysroot_path)
    sysroot = Sysroot.open(sysroot_path)
    deployed = device.deploy(sysroot, repo_path, result.ref, reporter)
    print(f"deployed {deployed.version} in {deployed.seconds:.1f} s")
    _status(sysroot)

    _say("enter the deployment: /usr is read-only, /etc is writable, /var is shared")
    _enter(sysroot, "touch /usr/bin/anything")
    _enter(sysroot, 'echo "written in /etc" > /etc/petra-demo && cat /etc/petra-demo')
    _enter(sysroot, "date > /var/petra-demo-state && cat /var/petra-demo-state")

    _say(f"compose a new version with one more package ({EXTRA_PACKAGE})")
    newer = _newer_spec(args.spec, workdir, spec.version)
    result2 = compose(load_spec(newer), repo_path, cache_dir=cache, reporter=reporter)
    print(f"commit: {result2.checksum} ({result2.build} build, {result2.seconds:.1f} s)")

    _say("upgrade: the new commit becomes the default deployment; the old one is the rollback")
    check = device.upgrade_check(sysroot)
    if check.available:
        print(f"update: {check.current.version} -> {check.available.version}")
        for change in check.changes:
            print(f"  {change.name} {change.old or '-'} -> {change.new or '-'}")
    upgraded = device.upgrade(sysroot, reporter)
    if upgraded:
        print(f"upgraded to {upgraded.version} in {upgraded.seconds:.1f} s")
    _status(sysroot)
    _enter(sysroot, f"command -v {EXTRA_PACKAGE}; cat /etc/petra-demo")

    _say("roll back: a reorder of the deployments, nothing is copied")
    target = device.rollback(sysroot)
    print(f"the default is {target.checksum[:12]} again")
    _status(sysroot)
    _enter(sysroot, f'command -v {EXTRA_PACKAGE} || echo "{EXTRA_PACKAGE}: not in this one"')

    _say(f"layer {EXTRA_PACKAGE} onto it with apt: a new deployment, the running one untouched")
    _shell(f"petra install --sysroot {sysroot.path} {EXTRA_PACKAGE}")
    layered = device.change_layers(
        sysroot, lambda layers, base: layering.add(layers, [EXTRA_PACKAGE], base), reporter, cache
    )
    print(f"layered in {layered.seconds:.1f} s")
    _status(sysroot)
    _enter(sysroot, f"command -v {EXTRA_PACKAGE}")

    _box(sysroot, cache, reporter)

    disk = workdir / "petra.img"
    _say(f"boot it: a disk image of {result.ref} (GRUB for BIOS), booted in qemu")
    _shell(f"petra image build --repo {repo_path} {result.ref} -o {disk} --force")
    built = image.build(repo_path, result.ref, disk, reporter, force=True)
    print(f"{image.human(built.size)} disk, {image.human(built.used)} used, {built.seconds:.1f} s")
    inside = "petra status; touch /usr/x"
    _shell(f"petra vm run {disk} -- sh -c {shlex.quote(inside)}")
    booted = vm.run_command(vm.Machine(disk), ["sh", "-c", inside], reporter, output=sys.stdout)
    print(f"  (exit {booted.exit_code}; result {booted.result_seconds:.0f} s after qemu started)")
    _broken_update(args.spec, workdir, repo_path, disk, spec.version, cache, reporter)
    _say(
        "done: run the same with the petra command, e.g. petra status --sysroot "
        + str(sysroot_path)
    )
    return 0


def _broken_update(
    spec: Path, workdir: Path, repo_path: Path, disk: Path, version: str, cache: Path,
    reporter: Reporter,
) -> None:  # fmt: skip
    """An update whose required health check fails: GRUB and petra bring the previous
    deployment back by themselves."""
    _say("a broken update rolls itself back: its required health check fails when it boots")
    path = workdir / "broken.toml"
    path.write_text(
        textwrap.dedent(f"""\
        # written by petra demo: the default spec with a health check that fails, one attempt
        include = ["{spec.absolute()}"]
        version = "{version}.2"
        [health]
        attempts = 1
        [health.required]
        demo-app = "test -e /etc/demo-app-ready"
        """)
    )
    broken = compose(load_spec(path), repo_path, cache_dir=cache, reporter=reporter)
    print(f"commit: {broken.checksum} (version {version}.2, on {broken.ref})")
    machine = vm.Machine(disk, share=repo_path)
    for line in ("petra upgrade -q && petra status", "petra status"):
        _shell(f"petra vm run {disk} --share {repo_path} -- sh -c {shlex.quote(line)}")
        ran = vm.run_command(machine, ["sh", "-c", line], reporter, output=sys.stdout)
        boots = f"{ran.boots} boots, " if ran.boots > 1 else ""
        print(f"  (exit {ran.exit_code}; {boots}result {ran.result_seconds:.0f} s after qemu "
              "started)")  # fmt: skip


def _box(sysroot: Sysroot, cache: Path, reporter: Reporter) -> None:
    """A box of another suite in the sysroot's /var, and a command run in it."""
    name = "bookworm"
    boxes = box_cli.boxes_of(sysroot.path)
    _say("a box: Debian bookworm beside the trixie system, kept in its /var")
    _shell(f"petra box create --sysroot {sysroot.path} {name} --suite bookworm")
    if name in [b.name for b in boxes.list()]:
        print(f"  (box {name} is there from an earlier run)")
    else:
        made, build = box.create(
            boxes,
            name,
            suite="bookworm",
            packages=(),
            network=True,
            mirror=FALLBACK_MIRROR,
            architecture=host_architecture(),
            cache_dir=cache,
            reporter=reporter,
        )
        print(f"  box {made.name}: Debian {made.suite} ({build} package tree)")
    line = "cat /etc/debian_version; . /etc/os-release; echo $PRETTY_NAME"
    _shell(f"petra box run --sysroot {sysroot.path} {name} -- sh -c {shlex.quote(line)}")
    made = boxes.get(name)
    argv = box.bwrap_argv(made, ["sh", "-c", line], box.Caller.current(), network=made.network)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    print(textwrap.indent((proc.stdout + proc.stderr).rstrip(), "  "))
    print(f"  (exit {proc.returncode})")


def _describe(repo: Repo, checksum: str, ref: str) -> None:
    data = inspect.describe(repo.read_commit(checksum), ref)
    print(
        f"version {data['version']}, kernel {data['kernel'] or '-'}, "
        f"{len(data['packages'])} packages, {human_size(data['size'] or 0)} "
        f"in {data['file-count']} files and dirs"
    )


def _status(sysroot: Sysroot) -> None:
    _shell(f"petra status --sysroot {sysroot.path}")
    print_status(sysroot)


def _enter(sysroot: Sysroot, line: str) -> None:
    _shell(f"petra enter --sysroot {sysroot.path} -- sh -c {shlex.quote(line)}")
    argv = device.enter_argv(sysroot, device.pick(sysroot, None), ["sh", "-c", line])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    for text in (proc.stdout, proc.stderr):
        if text.strip():
            print(textwrap.indent(text.rstrip(), "  "))
    print(f"  (exit {proc.returncode})")


def _newer_spec(spec: Path, workdir: Path, version: str) -> Path:
    path = workdir / "next.toml"
    path.write_text(
        textwrap.dedent(f"""\
        # written by petra demo: the default spec, one more package, a new version
        include = ["{spec.absolute()}"]
        version = "{version}.1"
        packages = ["{EXTRA_PACKAGE}"]
        """)
    )
    return path
