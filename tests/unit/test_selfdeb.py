"""petra's own .deb: what it holds, and that the same source gives the same bytes."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from petra import selfdeb

pytestmark = pytest.mark.unit


def test_the_deb_is_reproducible_and_holds_the_command(tmp_path: Path) -> None:
    first, second = selfdeb.build(tmp_path / "a"), selfdeb.build(tmp_path / "b")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert first.name == second.name and digest(first) == digest(second)
    assert re.fullmatch(r"petra_\d+\.\d+\.\d+\+src[0-9a-f]{12}_all\.deb", first.name)
    info = subprocess.run(["dpkg-deb", "-f", first], capture_output=True, text=True, check=True)
    assert "Depends: python3 (>= 3.11), python3-gi, gir1.2-ostree-1.0" in info.stdout
    listing = subprocess.run(["dpkg-deb", "-c", first], capture_output=True, text=True).stdout
    assert "./usr/bin/petra" in listing
    assert "./usr/lib/python3/dist-packages/petra/cli/__init__.py" in listing
    assert "__pycache__" not in listing
    # boot assessment: the judge after multi-user.target, the deadline from sysinit on
    assert "./usr/lib/systemd/system/multi-user.target.wants/petra-health.service" in listing
    timer = "./usr/lib/systemd/system/sysinit.target.wants/petra-health-deadline.timer"
    assert timer in listing and "./etc/grub.d/01_petra_trial" in listing
    assert selfdeb.build(tmp_path / "a") == first  # an existing build is reused
