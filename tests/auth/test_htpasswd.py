"""htpasswd files written by Apache's real `htpasswd` tool, every hash kind it writes.

The file is the oracle: if accessgate's APR1 or SHA-crypt code differed
from Apache's by one bit, a right password would be refused here.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from accessgate.auth import hashes
from accessgate.auth.base import OK, REFUSED, UNKNOWN_USER
from accessgate.auth.credentials import Basic
from accessgate.auth.htpasswd import HtpasswdMethod, read_htpasswd

HTPASSWD = shutil.which("htpasswd")
pytestmark = pytest.mark.skipif(HTPASSWD is None, reason="htpasswd is not installed (apt-get install apache2-utils)")

# htpasswd flag -> the kind accessgate reads it as
KINDS = {
    "-B": "bcrypt",
    "-m": "apr1",
    "-2": "sha256-crypt",
    "-5": "sha512-crypt",
    "-s": "sha1",
}
PASSWORDS = [
    pytest.param("correct horse", id="plain-ascii"),
    pytest.param("pä$$wörd-ü", id="utf8-and-dollars"),
    pytest.param("a:colon:inside", id="colons-in-the-password"),
    pytest.param("x" * 17, id="longer-than-md5-block"),
    pytest.param("y" * 80, id="longer-than-64-bytes"),
    pytest.param("k", id="one-character"),
]


def htpasswd(path: Path, flag: str, user: str, password: str, *more: str) -> None:
    args = [HTPASSWD, "-b", *(["-c"] if not path.exists() else []), flag, *more, str(path), user, password]
    if flag == "-B":
        args[2:2] = ["-C", "4"]  # the lowest cost keeps the suite fast; the cost is in the hash
    subprocess.run(args, check=True, capture_output=True)


def basic(user: str, password: str) -> Basic:
    return Basic(user, password.encode("utf-8"))


@pytest.mark.parametrize("flag", list(KINDS))
@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_htpasswd_wrote_is_accepted_and_a_near_miss_refused(tmp_path, flag, password):
    path = tmp_path / "htpasswd"
    htpasswd(path, flag, "alice", password)
    entries = read_htpasswd(path)
    assert entries.kinds == {"alice": KINDS[flag]}
    method = HtpasswdMethod(path)
    assert method.check(basic("alice", password)).outcome == OK
    assert method.check(basic("alice", chr(ord(password[0]) ^ 1) + password[1:])).outcome == REFUSED
    if len(password.encode()) < hashes.BCRYPT_MAX_PASSWORD or flag != "-B":  # bcrypt reads 72 bytes
        assert method.check(basic("alice", password + "x")).outcome == REFUSED
        assert method.check(basic("alice", password[:-1] + chr(ord(password[-1]) ^ 1))).outcome == REFUSED
    assert method.check(basic("Alice", password)).outcome == UNKNOWN_USER  # names match exactly, as in Apache


def test_sha_crypt_with_rounds_set_by_htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-5", "alice", "pw", "-r", "12000")
    htpasswd(path, "-2", "bob", "pw", "-r", "1000")
    stored = read_htpasswd(path).hashes
    assert stored["alice"].startswith("$6$rounds=12000$")
    method = HtpasswdMethod(path)
    assert method.check(basic("alice", "pw")).ok and method.check(basic("bob", "pw")).ok
    assert not method.check(basic("alice", "pX")).ok


def test_bcrypt_reads_72_bytes_on_every_bcrypt_version(tmp_path):
    # bcrypt 4 truncated longer passwords and bcrypt 5 raises: both must behave like Apache.
    path = tmp_path / "htpasswd"
    password = "z" * 72
    htpasswd(path, "-B", "alice", password)
    method = HtpasswdMethod(path)
    assert method.check(basic("alice", password + "anything")).ok
    assert not method.check(basic("alice", password[:-1])).ok


@pytest.mark.parametrize(
    "flag, why",
    [
        pytest.param("-d", "DES-crypt", id="des-crypt-refused"),
        pytest.param("-p", "plain text", id="plain-text-refused"),
    ],
)
def test_weak_entries_are_skipped_and_named_by_line_without_their_hash(tmp_path, flag, why):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-B", "alice", "pw")
    htpasswd(path, flag, "weak", "pw")
    entries = read_htpasswd(path)
    assert set(entries.hashes) == {"alice"}
    [problem] = entries.problems
    assert problem.line == 2 and why in problem.message and "htpasswd -B" in problem.message
    weak_hash = path.read_text().splitlines()[1].split(":", 1)[1]
    assert weak_hash not in str(problem)
    assert HtpasswdMethod(path).check(basic("weak", "pw")).outcome == UNKNOWN_USER


def test_broken_lines_and_duplicates_are_skipped_the_rest_kept(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-m", "alice", "one")
    htpasswd(path, "-m", "bob", "two")
    text = path.read_text()
    alice_again = text.splitlines()[0].replace("alice:", "alice:", 1)
    path.write_text("# comment\n\nno-colon-here\n" + text + alice_again + "\n:$apr1$x$y\n")
    entries = read_htpasswd(path)
    assert set(entries.hashes) == {"alice", "bob"}
    assert [p.line for p in entries.problems] == [3, 6, 7]


def test_the_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-B", "alice", "old")
    method = HtpasswdMethod(path)
    generation = method.generation
    assert method.check(basic("alice", "old")).ok
    htpasswd(path, "-B", "alice", "new")   # rewrites the file (new inode, size or time)
    htpasswd(path, "-m", "bob", "pw")
    method.poll()
    assert method.generation > generation
    assert method.check(basic("alice", "new")).ok
    assert not method.check(basic("alice", "old")).ok
    assert method.check(basic("bob", "pw")).ok


def test_a_same_size_rewrite_within_the_same_second_is_noticed(tmp_path):
    # Same length, same mtime second: only the nanoseconds or the inode differ.
    path = tmp_path / "htpasswd"
    htpasswd(path, "-s", "alice", "aaaa")
    method = HtpasswdMethod(path)
    replacement = tmp_path / "new"
    htpasswd(replacement, "-s", "alice", "bbbb")
    st = path.stat()
    os.replace(replacement, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even the same mtime: the inode differs
    method.poll()
    assert method.check(basic("alice", "bbbb")).ok


def test_a_file_that_goes_missing_keeps_the_last_entries(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-m", "alice", "pw")
    method = HtpasswdMethod(path)
    path.unlink()
    method.poll()
    assert method.check(basic("alice", "pw")).ok
    htpasswd(path, "-m", "carol", "pw")
    method.poll()
    assert method.check(basic("carol", "pw")).ok
    assert method.check(basic("alice", "pw")).outcome == UNKNOWN_USER


def test_a_missing_file_at_start_is_an_error_that_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match=r"htpasswd -B -c FILE USER"):
        HtpasswdMethod(tmp_path / "nope")


def test_an_empty_password_is_refused_even_if_the_file_has_one(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd(path, "-m", "alice", "")
    assert HtpasswdMethod(path).check(basic("alice", "")).outcome == REFUSED


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("$1$abc$def", id="glibc-md5-crypt"),
        pytest.param("$2y$99$" + "a" * 53, id="bcrypt-absurd-cost"),
        pytest.param("$6$rounds=5000000$salt$" + "a" * 86, id="sha512-crypt-5M-rounds"),
        pytest.param("{SHA}short", id="sha1-wrong-length"),
        pytest.param("$apr1$toolongsalt$" + "a" * 22, id="apr1-salt-too-long"),
        pytest.param("$5$salt$" + "a" * 10, id="sha256-crypt-digest-too-short"),
    ],
)
def test_hashes_accessgate_does_not_check_are_refused_with_advice(stored):
    with pytest.raises(hashes.UnsupportedHash, match="htpasswd"):
        hashes.kind_of(stored)


def test_sha1_entry_is_unsalted_base64_sha1():
    stored = "{SHA}" + base64.b64encode(__import__("hashlib").sha1(b"pw").digest()).decode()
    assert hashes.verify(b"pw", stored) and not hashes.verify(b"pW", stored)
