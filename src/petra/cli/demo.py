"""petra demo: the whole story on the built-in default spec, non-interactively."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from petra import inspect
from petra.cli.output import human_size, reporter_for
from petra.compose import compose
from petra.compose.cache import default_cache_dir
from petra.ostree import Repo
from petra.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="compose the default spec and show it")
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where the demo writes")
    p.add_argument("--spec", type=Path, default=EXAMPLES / "server.toml")
    p.add_argument("--cache", type=Path, default=None)
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n### {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    reporter = reporter_for(args)
    repo_path = args.workdir / "repo"
    _say(f"compose {args.spec} into {repo_path}")
    spec = load_spec(args.spec)
    result = compose(
        spec, repo_path, cache_dir=args.cache or default_cache_dir(), reporter=reporter
    )
    print(f"ref:    {result.ref}")
    print(f"commit: {result.checksum}")
    repo = Repo.open(repo_path)
    info = repo.read_commit(result.checksum)
    data = inspect.describe(info, result.ref)
    _say("what the commit holds")
    print(
        f"version {data['version']}, kernel {data['kernel'] or '-'}, "
        f"{len(data['packages'])} packages, {human_size(data['size'] or 0)} "
        f"in {data['file-count']} files and dirs"
    )
    wanted = [
        p for p in ("systemd", "openssh-server", "ostree", "dracut", "apt") if p in data["packages"]
    ]
    for name in wanted:
        print(f"  {name} {data['packages'][name]}")
    _say(f"history of {result.ref}")
    for commit in repo.log(result.ref)[:3]:
        print(f"  {commit.checksum[:16]}  {commit.version}")
    return 0
