"""The spec: parsing, merging and every error a user can make, without touching the network."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from petra.errors import SpecError
from petra.spec import SETTINGS, default_mirror, load_spec

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_examples_load() -> None:
    server = load_spec(EXAMPLES / "server.toml")
    minimal = load_spec(EXAMPLES / "minimal.toml")
    assert server.kernel and not minimal.kernel
    assert server.ref.startswith("petra/trixie/") and server.ref.endswith("/server")
    assert "openssh-server" in server.packages
    assert "ca-certificates" in server.packages  # from base.toml
    assert sorted(f.destination for f in server.files) == ["/etc/default/grub", "/etc/motd"]
    assert server.users[0].name == "admin" and server.users[0].groups == ("sudo",)
    assert server.services_enable == ("ssh.service",)


def test_include_merges_lists_and_overrides_scalars(tmp_path: Path) -> None:
    write(
        tmp_path / "base.toml",
        """
        suite = "bookworm"
        hostname = "base"
        packages = ["a1", "b2"]
        kernel-args = ["quiet"]
        [services]
        enable = ["one.service"]
    """,
    )
    spec = load_spec(
        write(
            tmp_path / "top.toml",
            """
        include = ["base.toml"]
        name = "top"
        version = "1"
        hostname = "top"
        packages = ["b2", "c3"]
        kernel-args = ["ro"]
        [services]
        enable = ["two.service"]
    """,
        )
    )
    assert spec.suite == "bookworm"
    assert spec.hostname == "top"
    assert spec.packages == ("a1", "b2", "c3")
    assert spec.kernel_args == ("quiet", "ro")
    assert spec.services_enable == ("one.service", "two.service")
    assert spec.ref.startswith("petra/bookworm/")


def test_digest_follows_content_of_files(tmp_path: Path) -> None:
    write(tmp_path / "files/motd", "hello\n")
    path = write(
        tmp_path / "s.toml",
        """
        name = "s"
        version = "1"
        [files]
        "/etc/motd" = "files/motd"
    """,
    )
    first = load_spec(path).digest
    assert load_spec(path).digest == first
    (tmp_path / "files/motd").write_text("changed\n")
    assert load_spec(path).digest != first


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.toml",
        """
        name = "s"
        version = "1"
        pakages = ["x"]
    """,
    )
    message = error_of(path)
    assert f"{path}:3" in message and "pakages" in message and "packages" in message


def test_wrong_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.toml",
        """
        name = "s"
        version = "1"
        kernel = "yes"
    """,
    )
    message = error_of(path)
    assert f"{path}:3" in message and "kernel" in message and "true or false" in message


def test_wrong_type_in_list(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", 'name = "s"\nversion = "1"\npackages = ["a", 3]\n')
    assert "a list of strings" in error_of(path)


def test_missing_include(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", 'include = ["nope.toml"]\nname = "s"\nversion = "1"\n')
    message = error_of(path)
    assert f"{path}:1" in message and "nope.toml" in message and "not found" in message


def test_include_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'include = ["b.toml"]\n')
    write(tmp_path / "b.toml", 'include = ["a.toml"]\n')
    path = write(tmp_path / "s.toml", 'include = ["a.toml"]\nname = "s"\nversion = "1"\n')
    message = error_of(path)
    assert "cycle" in message and "a.toml -> b.toml -> a.toml" in message


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", 'include = ["s.toml"]\nname = "s"\nversion = "1"\n')
    assert "cycle" in error_of(path)


def test_missing_required_key(tmp_path: Path) -> None:
    assert "'version'" in error_of(write(tmp_path / "s.toml", 'name = "s"\n'))


def test_invalid_toml(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "s.toml", 'name = "s\n'))
    assert "invalid TOML" in message and "line 1" in message


@pytest.mark.parametrize(
    ("files_line", "expected"),
    [
        ('"/etc/motd" = "missing"', "does not exist"),
        ('"/etc/motd" = "../outside"', "escapes the spec's folder"),
        ('"/etc/motd" = "/etc/passwd"', "escapes the spec's folder"),
        ('"etc/motd" = "motd"', "outside the tree"),
        ('"/etc/../../x" = "motd"', "outside the tree"),
        ('"/" = "motd"', "outside the tree"),
        ('"/var/lib/x" = "motd"', "under /var"),
        ('"/home/admin/.bashrc" = "motd"', "under /home"),
        ('"/etc/motd" = 3', "expected a string"),
    ],
)
def test_files_errors(tmp_path: Path, files_line: str, expected: str) -> None:
    (tmp_path / "spec").mkdir()
    write(tmp_path / "spec/motd", "hi\n")
    write(tmp_path / "outside", "secret\n")
    path = write(tmp_path / "spec/s.toml", f'name = "s"\nversion = "1"\n[files]\n{files_line}\n')
    message = error_of(path)
    assert expected in message and f"{path}:4" in message


def test_symlink_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    write(tmp_path / "secret", "x\n")
    (tmp_path / "spec/link").symlink_to(tmp_path / "secret")
    path = write(
        tmp_path / "spec/s.toml", 'name = "s"\nversion = "1"\n[files]\n"/etc/x" = "link"\n'
    )
    assert "escapes" in error_of(path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('architecture = "vax"', "must be one of"),
        ('hostname = "no spaces"', "host name"),
        ('packages = ["Bad_Name"]', "not a valid Debian package name"),
        ('kernel-args = ["a b"]', "cannot be empty or contain spaces"),
        ('mirror = "ftp://x"', "URL"),
        ('name = "UPPER"', "lowercase"),
    ],
)
def test_value_checks(tmp_path: Path, line: str, expected: str) -> None:
    key = line.split()[0]
    base = {"name": 'name = "s"', "version": 'version = "1"'}
    base.pop(key, None)
    path = write(tmp_path / "s.toml", "\n".join([*base.values(), line]) + "\n")
    assert expected in error_of(path)


def test_users_and_services_errors(tmp_path: Path) -> None:
    head = 'name = "s"\nversion = "1"\n'
    assert "unknown key 'users.homedir'" in error_of(
        write(tmp_path / "a.toml", head + '[[users]]\nname = "u"\nhomedir = "/x"\n')
    )
    assert "missing 'name'" in error_of(
        write(tmp_path / "b.toml", head + "[[users]]\nuid = 1000\n")
    )
    assert "outside 1000..59999" in error_of(
        write(tmp_path / "c.toml", head + '[[users]]\nname = "u"\nuid = 5\n')
    )
    assert "not a unit name" in error_of(
        write(tmp_path / "d.toml", head + '[services]\nenable = ["ssh"]\n')
    )
    assert "both enabled and disabled" in error_of(
        write(
            tmp_path / "e.toml",
            head + '[services]\nenable = ["a.service"]\n' 'disable = ["a.service"]\n',
        )
    )
    assert "also in packages" in error_of(
        write(tmp_path / "f.toml", head + 'packages = ["vim"]\nexclude-packages = ["vim"]\n')
    )


def test_settings_table_documents_every_key() -> None:
    assert all(setting.doc for setting in SETTINGS.values())
    for key in (
        "name",
        "version",
        "suite",
        "architecture",
        "mirror",
        "include",
        "packages",
        "exclude-packages",
        "kernel",
        "hostname",
        "kernel-args",
        "services",
        "files",
        "users",
    ):
        assert key in SETTINGS


def test_default_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: trixie\n"
    )
    assert default_mirror(etc) == "http://mirror.example/debian"
    (etc / "sources.list").write_text(
        "deb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert default_mirror(etc) == "http://other.example/debian"
    assert default_mirror(tmp_path / "none") == "http://deb.debian.org/debian"
