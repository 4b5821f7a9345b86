"""petra init / deploy / status / upgrade / rollback / cleanup / pin / kargs / verify / health /
enter: the device side."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from petra import grubenv, health, kargs, layering, stateroot
from petra import sysroot as device
from petra.cli.output import date, print_json, reporter_for
from petra.errors import IntegrityError, RepoError, UsageError
from petra.layering import Layers
from petra.ostree import Sysroot


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--sysroot", type=Path, default=Path("/"), help="the sysroot (default: / , this machine)"
    )

    p = sub.add_parser("init", parents=[common, where], help="make an empty sysroot")
    p.add_argument("--osname", default=stateroot.DEFAULT_OSNAME, help="the stateroot's name")
    p.add_argument(
        "--keep",
        type=int,
        default=device.DEFAULT_KEEP,
        help="deployments kept per stateroot (default 2: the new one and the rollback)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("deploy", parents=[common, where], help="deploy a commit as the default")
    p.add_argument("--repo", type=Path, required=True, help="the repository to take it from")
    p.add_argument("rev", metavar="REF|COMMIT")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", parents=[common, where], help="list the deployments")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("upgrade", parents=[common, where], help="deploy the newest commit")
    p.add_argument("--cache", type=Path, default=None, help="package cache for layered packages")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="only say what would change (exit 77: nothing new)"
    )
    mode.add_argument("--download-only", action="store_true", help="pull, do not deploy")
    p.set_defaults(func=cmd_upgrade)

    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="package cache (default: $PETRA_CACHE or ~/.cache/petra)",
    )

    p = sub.add_parser(
        "install", parents=[common, where, cache], help="layer packages: a new deployment"
    )
    p.add_argument("packages", nargs="+", metavar="PKG|./FILE.deb")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "uninstall", parents=[common, where, cache], help="drop layered packages: a new deployment"
    )
    p.add_argument("packages", nargs="+", metavar="PKG")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("override", help="remove base packages, or undo that: a new deployment")
    actions = p.add_subparsers(dest="action", metavar="remove|reset", required=True)
    for action, text in (("remove", "remove base packages"), ("reset", "undo their removal")):
        a = actions.add_parser(action, parents=[common, where, cache], help=text)
        a.add_argument("packages", nargs="+", metavar="PKG")
        a.set_defaults(func=cmd_override)

    p = sub.add_parser("rollback", parents=[common, where], help="make the previous the default")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("cleanup", parents=[common, where], help="drop deployments beyond --keep")
    p.set_defaults(func=cmd_cleanup)

    for verb, text in (("pin", "keep deployment N for good"), ("unpin", "undo pin")):
        p = sub.add_parser(verb, parents=[common, where], help=text)
        p.add_argument("index", type=int, metavar="N", help="the deployment (see petra status)")
        p.set_defaults(func=cmd_pin, pinned=verb == "pin")

    p = sub.add_parser(
        "kargs",
        parents=[common, where],
        help="print the kernel arguments, or deploy the default again with them changed",
    )
    for action, text in (
        ("append", "add KEY or KEY=VALUE"),
        ("delete", "remove KEY (every value) or KEY=VALUE"),
        ("replace", "set KEY's value: KEY=VALUE, or KEY=OLD=NEW when KEY is set more than once"),
    ):
        p.add_argument(
            f"--{action}",
            dest="edits",
            action="append",
            type=partial(kargs.Edit, action),
            default=[],
            metavar="KEY[=VALUE]",
            help=text,
        )
    p.set_defaults(func=cmd_kargs)

    p = sub.add_parser(
        "verify", parents=[common, where], help="check the deployments' files against the commits"
    )
    p.add_argument("--deployment", type=int, default=None, metavar="N", help="(default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "health", parents=[common, where], help="run the health checks (--boot: judge this boot)"
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--boot",
        action="store_true",
        help="as petra-health.service does: record the verdict, end a trial or reboot for "
        "another attempt, finish an automatic rollback",
    )
    when.add_argument(
        "--deadline",
        action="store_true",
        help="as petra-health-deadline.service does: a boot on trial with no verdict yet is "
        "recorded as failed and rebooted (an attempt used)",
    )
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("enter", parents=[common, where], help="run a deployment as a container")
    p.add_argument("--deployment", type=int, default=None, metavar="N", help="(default: 0)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_enter)


def cmd_init(args: argparse.Namespace) -> int:
    device.init(args.sysroot, args.osname, args.keep)
    print(f"sysroot {args.sysroot.absolute()} ready, stateroot {args.osname}, keeps {args.keep}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    result = device.deploy(sysroot, args.repo, args.rev, reporter_for(args))
    print(f"deployed {result.version or '-'} ({result.checksum}) as the default")
    if result.removed:
        print(f"removed {result.removed} old deployment(s)")
    print(f"took {result.seconds:.1f} s")
    return 0


def status_data(sysroot: Sysroot) -> list[dict[str, Any]]:
    """The documented shape of `petra status --json`: one object per deployment."""
    deployments = sysroot.deployments()
    target = device.rollback_target(deployments)
    standing = _standing(sysroot, deployments)
    data = []
    for dep, health_of in zip(deployments, standing, strict=True):
        source = device.source_of(sysroot, dep)
        layers = Layers.of(dep)
        info = (
            sysroot.repo.read_commit(dep.checksum)
            if sysroot.repo.has_commit(dep.checksum)
            else None
        )
        data.append(
            {
                "index": dep.index,
                "default": dep.index == 0,
                "booted": dep.booted,
                "rollback": target is not None and dep.index == target.index,
                "osname": dep.osname,
                "commit": dep.checksum,
                "serial": dep.serial,
                "ref": source.ref,
                "version": info.version if info else None,
                "timestamp": info.timestamp if info else None,
                "origin": dep.refspec,
                "source": source.url.removeprefix("file://") if source.url else None,
                "base": layering.base_of(info) if info else None,
                "layered": list(layers.layered),
                "removed": list(layers.removed),
                "kernel-args": " ".join(kargs.editable(dep.kernel_args)),
                "pinned": dep.pinned,
                "health": health_of.to_json() if health_of.state else None,
            }
        )
    return data


def _standing(sysroot: Sysroot, deployments: list[Any]) -> list[health.Health]:
    env = grubenv.read(grubenv.path_of(sysroot.path))
    records = {
        name: health.Records.load(sysroot.stateroot_var(name))
        for name in {d.osname for d in deployments}
    }
    return [health.standing([dep], env, records[dep.osname])[0] for dep in deployments]


def health_line(h: dict[str, Any]) -> str:
    """How status shows a deployment's health."""
    failed = f"failed at {h['failed-at']}: {h['failed-check']}" if h["failed-at"] else ""
    if h["state"] == "trial":
        left = h["attempts-left"]
        text = f"on trial, {left} boot attempt{'s' if left != 1 else ''} left"
        return f"{text} (last boot {failed})" if failed else text
    if h["state"] == "failed":
        rolled = h["automatic-rollback"]
        boots = len(h["failed-boots"])
        failed += f" ({boots} failed boots recorded)" if boots > 1 else ""
        return failed + (f"; rolled back automatically at {rolled['at']}" if rolled else "")
    text = f"good since {h['since']}" if h["state"] == "good" else str(h["state"])
    if h["warnings"]:
        text += f" (warning: {'; '.join(h['warnings'])})"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    if args.json:
        print_json(status_data(sysroot))
        return 0
    print_status(sysroot)
    return 0


def print_status(sysroot: Sysroot) -> None:
    data = status_data(sysroot)
    if not data:
        print(f"{sysroot.path}: no deployments (deploy one with: petra deploy --repo R REF)")
        return
    notice = health.rollback_notice(
        sysroot.deployments(), health.Records.load(sysroot.stateroot_var(data[0]["osname"]))
    )
    if notice:
        print(f"! {notice}")
    for d in data:
        marks = ", ".join(m for m in ("default", "booted", "rollback", "pinned") if d[m])
        head = f"{'●' if d['booted'] else ' '} {d['index']}  {d['osname']}  {d['version'] or '-'}"
        print(f"{head}  ({marks})" if marks else head)
        print(f"     commit  {d['commit']}.{d['serial']}")
        if d["ref"]:
            print(f"     ref     {d['ref']}")
        if d["source"]:
            print(f"     source  {d['source']}")
        if d["timestamp"] is not None:
            print(f"     date    {date(d['timestamp'])}")
        if d["layered"]:
            print(f"     layered {' '.join(d['layered'])}")
        if d["removed"]:
            print(f"     removed {' '.join(d['removed'])}")
        if d["kernel-args"]:
            print(f"     kargs   {d['kernel-args']}")
        if d["health"]:
            print(f"     health  {health_line(d['health'])}")


def cmd_upgrade(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    if args.check:
        check = device.upgrade_check(sysroot)
        if check.available is None:
            print(f"no update: {check.current.version or check.current.checksum} is the newest")
            return device.EXIT_NO_UPDATE
        new = check.available
        print(f"update available: {check.current.version or '-'} -> {new.version or '-'}")
        print(f"  commit   {new.checksum}")
        added = sum(1 for c in check.changes if c.old is None)
        removed = sum(1 for c in check.changes if c.new is None)
        changed = len(check.changes) - added - removed
        print(f"  packages {added} added, {removed} removed, {changed} changed")
        for c in check.changes[:20]:
            print(f"    {c.name} {c.old or '-'} -> {c.new or '-'}")
        if len(check.changes) > 20:
            print(f"    … and {len(check.changes) - 20} more")
        return 0
    result = device.upgrade(
        sysroot, reporter_for(args), download_only=args.download_only, cache=args.cache
    )
    if result is None:
        print("no update: the default deployment is the newest commit")
        return 0
    if args.download_only:
        print(f"downloaded {result.version or '-'} ({result.checksum}); not deployed")
        return 0
    print(f"upgraded to {result.version or '-'} ({result.checksum}), the new default")
    if result.removed:
        print(f"removed {result.removed} old deployment(s)")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    osname = device.osname_of(sysroot)
    files = [p for p in args.packages if p.endswith(".deb") or "/" in p]
    names = [p for p in args.packages if p not in files]
    local = [layering.keep_local_deb(sysroot, osname, Path(f)) for f in files]

    def change(layers: Layers, base: dict[str, str]) -> Layers:
        return layering.add_local(layering.add(layers, names, base), local)

    result = device.change_layers(sysroot, change, reporter_for(args), args.cache)
    _say_layered(result, "installed " + " ".join(args.packages))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    result = device.change_layers(
        sysroot, lambda layers, _: layering.remove(layers, args.packages), reporter_for(args)
    )
    _say_layered(result, "uninstalled " + " ".join(args.packages))
    return 0


def cmd_override(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)

    def change(layers: Layers, base: dict[str, str]) -> Layers:
        if args.action == "remove":
            return layering.override_remove(layers, args.packages, base)
        return layering.override_reset(layers, args.packages)

    result = device.change_layers(sysroot, change, reporter_for(args), args.cache)
    verb = "removed from the base" if args.action == "remove" else "restored from the base"
    _say_layered(result, f"{verb}: " + " ".join(args.packages))
    return 0


def _say_layered(result: device.DeployResult, what: str) -> None:
    print(f"{what}; new default deployment {result.version or '-'} ({result.checksum})")
    print("the running system is unchanged; reboot into the new deployment to use it")
    if result.removed:
        print(f"removed {result.removed} old deployment(s)")
    print(f"took {result.seconds:.1f} s")


def cmd_rollback(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    target = device.rollback(sysroot)
    print(f"rolled back: {target.checksum}.{target.serial} is the default now")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    removed = device.cleanup(sysroot)
    print(f"removed {removed} deployment(s); objects only they used are freed")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    dep = device.pin(sysroot, args.index, args.pinned)
    state = "pinned: never removed by deploy, upgrade or cleanup" if dep.pinned else "unpinned"
    print(f"deployment {dep.index} ({dep.checksum}.{dep.serial}) {state}")
    return 0


def cmd_kargs(args: argparse.Namespace) -> int:
    sysroot = Sysroot.open(args.sysroot)
    if not args.edits:
        print(" ".join(kargs.editable(device.pick(sysroot, None).kernel_args)))
        return 0
    result = device.set_kernel_args(sysroot, args.edits, reporter_for(args))
    if result is None:
        print("no change: the default deployment has these kernel arguments already")
        return 0
    now = kargs.editable(sysroot.deployments()[0].kernel_args)
    print(f"deployed {result.version or '-'} ({result.checksum}) with: {' '.join(now)}")
    print("the previous deployment keeps its own; boot the new default to use them")
    if result.removed:
        print(f"removed {result.removed} old deployment(s)")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    if args.deadline:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        late = health.missed_deadline(Sysroot.open(args.sysroot), uptime)
        if late is None:
            print("no boot on trial waits for a verdict: nothing to do")
            return 0
        _reboot(f"boot bad: {late.checksum[:12]}.{late.serial} is on trial and "
                f"{health.deadline_reason(uptime)}; rebooting (GRUB counts the attempt)",
                health.REBOOT_NOW)  # fmt: skip
        return 1
    if not args.boot:
        results = health.run_checks()
        for c in results:
            mark = "ok" if c.passed else ("FAILED" if c.required else "warning")
            print(f"{mark:8} {c.unit}{': ' + c.detail if c.detail else ''}")
        if not results:
            print(f"no health checks ({health.REQUIRED_TARGET} and {health.WANTED_TARGET} "
                  "want none)")  # fmt: skip
        return 1 if any(c.required and not c.passed for c in results) else 0
    verdict = health.judge_boot(Sysroot.open(args.sysroot))
    if verdict.rolled_back:
        r = verdict.rolled_back
        print(f"automatic rollback: {r['from-version']} ({r['from'][:12]}) did not boot "
              f"healthy ({r['reason']}); {r['to-version']} is the default again")  # fmt: skip
    for c in verdict.checks:
        print(f"{'ok' if c.passed else 'FAILED'} {c.unit}{': ' + c.detail if c.detail else ''}")
    name = f"{verdict.booted.checksum[:12]}.{verdict.booted.serial}"
    if verdict.good:
        print(f"boot good: {name}" + (" (its trial is over)" if verdict.on_trial else ""))
        return 0
    if verdict.reboot and not verdict.on_trial:
        _reboot(f"boot bad: {name} failed its trial already; rebooting into the default")
    elif verdict.reboot:
        _reboot(f"boot bad: {name} is on trial; rebooting (GRUB counts the attempt)")
    else:
        print(f"boot bad: {name} (not on trial: nothing is rolled back)")
    return 1


def _reboot(message: str, argv: tuple[str, ...] = health.REBOOT) -> None:
    """Say why, then reboot the machine (the message reaches the journal first)."""
    print(message)
    sys.stdout.flush()
    subprocess.run(argv, check=False)


SHOWN = 20  # problems or /etc changes printed per deployment (--json has them all)


def cmd_verify(args: argparse.Namespace) -> int:
    from petra import verify

    sysroot = Sysroot.open(args.sysroot)
    if args.deployment is None:
        chosen = sysroot.deployments()
        if not chosen:
            raise RepoError(f"{sysroot.path} has no deployment", "deploy one with: petra deploy")
    else:
        chosen = [device.pick(sysroot, args.deployment)]
    start = time.monotonic()
    reports = verify.verify(sysroot, chosen)
    seconds = time.monotonic() - start
    if args.json:
        print_json([verify_data(r) for r in reports])
    else:
        for r in reports:
            dep = r.deployment
            head = f"deployment {dep.index} ({dep.checksum[:12]}.{dep.serial})"
            if r.ok:
                print(f"{head}: /usr matches its commit ({r.checked} entries checked)")
            else:
                print(f"{head}: {len(r.problems)} difference(s) in /usr")
                for p in r.problems[:SHOWN]:
                    print(f"    {p.kind:10} {p.path}" + (f" ({p.detail})" if p.detail else ""))
                if len(r.problems) > SHOWN:
                    print(f"    … and {len(r.problems) - SHOWN} more (--json lists them all)")
            if r.etc:
                print(f"  /etc: {len(r.etc)} local change(s) against /usr/etc")
                for c in r.etc[:SHOWN]:
                    print(f"    {c.change:10} {c.path}")
                if len(r.etc) > SHOWN:
                    print(f"    … and {len(r.etc) - SHOWN} more")
        print(f"took {seconds:.1f} s")
    bad = [r for r in reports if not r.ok]
    if bad:
        count = sum(len(r.problems) for r in bad)
        which = ", ".join(str(r.deployment.index) for r in bad)
        raise IntegrityError(
            f"{count} file(s) of deployment {which} differ from the commit",
            "deploy the commit again (petra deploy --repo R REF) or roll back to a good one; "
            "check the repo's objects too: ostree fsck",
        )
    return 0


def verify_data(r: Any) -> dict[str, Any]:
    """The documented shape of one deployment in `petra verify --json`."""
    dep = r.deployment
    return {
        "index": dep.index,
        "commit": dep.checksum,
        "serial": dep.serial,
        "ok": r.ok,
        "checked": r.checked,
        "problems": [{"path": p.path, "kind": p.kind, "detail": p.detail} for p in r.problems],
        "etc": [{"path": c.path, "change": c.change} for c in r.etc],
    }


def cmd_enter(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    sysroot = Sysroot.open(args.sysroot)
    dep = device.pick(sysroot, args.deployment)
    if not dep.path.is_dir():
        raise UsageError(f"deployment {dep.index} has no tree at {dep.path}", "run: petra status")
    argv = device.enter_argv(sysroot, dep, command)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # noqa: S606 (petra becomes bwrap: the exit code is CMD's)
