"""petra compose / log / show / diff."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from petra import inspect
from petra import sysroot as device
from petra.cli.output import date, human_size, print_json, reporter_for
from petra.compose import compose
from petra.compose.cache import default_cache_dir
from petra.errors import UsageError
from petra.ostree import Repo, Sysroot
from petra.spec import load_spec


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compose", parents=[common], help="compose a spec into an OSTree commit")
    p.add_argument("spec", type=Path, help="the spec (TOML)")
    p.add_argument("--repo", type=Path, required=True, help="OSTree repo (created if absent)")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="compose cache (default: $PETRA_CACHE or ~/.cache/petra)",
    )
    p.add_argument("--force", action="store_true", help="commit even if nothing changed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("log", parents=[common], help="history of a ref")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("show", parents=[common], help="one commit: version, packages, size")
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("rev", metavar="REF|COMMIT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("diff", parents=[common], help="packages and files between two commits")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", type=Path, help="OLD and NEW are refs or commits of this repo")
    where.add_argument(
        "--sysroot",
        type=Path,
        help="OLD and NEW are deployment indices (default: the rollback and the default)",
    )
    p.add_argument("old", metavar="OLD", nargs="?")
    p.add_argument("new", metavar="NEW", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)


def cmd_compose(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    result = compose(
        spec,
        args.repo,
        cache_dir=args.cache or default_cache_dir(),
        reporter=reporter_for(args),
        force=args.force,
    )
    if args.json:
        print_json(
            {
                "ref": result.ref,
                "commit": result.checksum,
                "changed": result.changed,
                "build": result.build,
                "seconds": round(result.seconds, 1),
                "packages": result.packages,
            }
        )
        return 0
    print(f"ref:      {result.ref}")
    print(f"commit:   {result.checksum}")
    state = "new commit" if result.changed else "unchanged"
    print(
        f"result:   {state}, {len(result.packages)} packages, {result.build} build, "
        f"{result.seconds:.1f} s"
    )
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    repo = Repo.open(args.repo)
    history = repo.log(args.ref)
    if args.json:
        print_json(
            [
                {
                    "commit": c.checksum,
                    "version": c.version,
                    "timestamp": c.timestamp,
                    "subject": c.subject,
                    "parent": c.parent,
                }
                for c in history
            ]
        )
        return 0
    for info in history:
        print(f"commit {info.checksum}")
        print(f"  version  {info.version or '-'}")
        print(f"  date     {date(info.timestamp)}")
        print(f"  packages {len(inspect.packages(info))}")
        print(f"  subject  {info.subject}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    repo = Repo.open(args.repo)
    checksum = repo.resolve(args.rev)
    assert checksum is not None
    ref = args.rev if args.rev in repo.refs() else None
    data = inspect.describe(repo.read_commit(checksum), ref)
    if args.json:
        print_json(data)
        return 0
    print(f"commit       {data['commit']}")
    if ref:
        print(f"ref          {ref}")
    print(f"version      {data['version'] or '-'}")
    print(f"date         {date(data['timestamp'])}")
    print(f"suite        {data['suite']} ({data['architecture']}) from {data['mirror']}")
    print(f"spec digest  {data['spec-digest']}")
    if data["kernel"]:
        print(f"kernel       {data['kernel']}  args: {' '.join(data['kernel-args']) or '-'}")
    if data["size"] is not None:
        print(f"size         {human_size(data['size'])} in {data['file-count']} files and dirs")
    print(f"packages     {len(data['packages'])}")
    for name, version in data["packages"].items():
        print(f"  {name} {version}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    if args.sysroot:
        sysroot = Sysroot.open(args.sysroot)
        old, new = _deployments_to_compare(sysroot, args.old, args.new)
        data = inspect.diff(sysroot.repo, old, new)
    else:
        if not args.old or not args.new:
            raise UsageError("diff --repo needs OLD and NEW", "give two refs or commits")
        data = inspect.diff(Repo.open(args.repo), args.old, args.new)
    if args.json:
        print_json(data)
        return 0
    pk = data["packages"]
    print(
        f"packages: {len(pk['added'])} added, {len(pk['removed'])} removed, "
        f"{len(pk['changed'])} changed"
    )
    for name, version in pk["added"].items():
        print(f"  + {name} {version}")
    for name, version in pk["removed"].items():
        print(f"  - {name} {version}")
    for name, (old, new) in pk["changed"].items():
        print(f"  ~ {name} {old} -> {new}")
    files = data["files"]
    print(
        f"files: {len(files['modified'])} modified, {len(files['removed'])} removed, "
        f"{len(files['added'])} added"
    )
    for kind, sign in (("added", "A"), ("removed", "D"), ("modified", "M")):
        paths = files[kind]
        for path in paths[:10]:
            print(f"  {sign} {path}")
        if len(paths) > 10:
            print(f"  {sign} … and {len(paths) - 10} more")
    return 0


def _deployments_to_compare(sysroot: Sysroot, old: str | None, new: str | None) -> tuple[str, str]:
    """The commits of deployments OLD and NEW (indices); by default the rollback deployment and
    the default one. UsageError for an index that is not a listed deployment."""
    for given in (old, new):
        if given is not None and not given.isdigit():
            raise UsageError(f"'{given}' is not a deployment index", "see: petra status")
    if old is None:
        target = device.rollback_target(sysroot.deployments())
        if target is None:
            raise UsageError("there is no rollback deployment to compare with", "see: petra status")
        old = str(target.index)
    first = device.pick(sysroot, int(old))
    second = device.pick(sysroot, int(new) if new is not None else 0)
    return first.checksum, second.checksum
