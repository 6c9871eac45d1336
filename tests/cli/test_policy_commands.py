"""`accessgate check`, `explain` and `test`: what they print and how they exit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from accessgate.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "policy" / "example.yaml")

SMALL = """\
version: 1
timezone: Europe/Berlin
sites:
  facebook:
    domains: [facebook.com, fbcdn.net]
  linkedin:
    domains: [linkedin.com]
    read_only_allow:
      - {method: POST, path: "/login"}
directory:
  groups:
    pr: [alice]
roles:
  pr:
    members: ["group:pr"]
    access:
      "*": full
  everyone:
    members: [all]
    access:
      linkedin: read-only
      facebook: {level: full, windows: ["mon-fri 12:00-13:00"], daily_minutes: 20}
unauthenticated: deny
unlisted: allow
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


# ---- check ------------------------------------------------------------------


def test_check_prints_a_summary_of_a_valid_policy(capsys):
    status, out, _ = run(capsys, "check", EXAMPLE)
    assert status == 0
    assert re.fullmatch(
        rf"OK: {re.escape(EXAMPLE)} \(\d+ sites, 5 roles, \d+ tests, policy [0-9a-f]{{12}}\)\n", out
    ), out


def test_check_dump_prints_one_file_that_decides_like_the_original(capsys, tmp_path):
    from accessgate.policy.loader import load_policy
    from accessgate.decision.policytests import run_tests

    status, out, _ = run(capsys, "check", "--dump", EXAMPLE)
    assert status == 0 and "include:" not in out
    dumped = tmp_path / "one-file.yaml"
    dumped.write_text(out)
    original, copy = load_policy(EXAMPLE), load_policy(dumped)
    assert copy.sites == original.sites and copy.roles == original.roles
    assert all(r.passed for r in run_tests(copy)), "the dumped policy fails its own tests"


@pytest.mark.parametrize(
    "text, problems",
    [
        pytest.param(
            SMALL.replace("unlisted: allow", "unlisted: allow\nfrobnicate: 1"),
            [r"policy\.yaml:25:1: .*'frobnicate'"],
            id="an-unknown-key-is-named-by-line-and-column",
        ),
        pytest.param(
            SMALL.replace("mon-fri 12:00-13:00", "mon-fri 12:00-25:00"),
            [r"policy\.yaml:22:41: .*25:00"],
            id="a-malformed-window-is-named",
        ),
        pytest.param(
            SMALL.replace("[linkedin.com]", "[linkedin.com, fbcdn.net]").replace("linkedin: read-only", "linkedn: read-only"),
            [r"policy\.yaml:7:29: .*fbcdn\.net", r"policy\.yaml:21:7: .*linkedn"],
            id="every-problem-is-reported-not-just-the-first",
        ),
    ],
)
def test_check_reports_every_problem_and_exits_1(capsys, tmp_path, text, problems):
    path = write(tmp_path, text)
    status, out, _ = run(capsys, "check", path)
    assert status == 1
    lines = out.splitlines()
    assert len(lines) == len(problems) + 1
    for line, pattern in zip(lines, problems):
        assert re.match(re.escape(str(tmp_path)) + "/" + pattern, line), line
    assert lines[-1] == f"{path}: not valid ({len(problems)} problem{'s' if len(problems) > 1 else ''})"


def test_check_reads_every_file_and_fails_if_any_is_invalid(capsys, tmp_path):
    good = write(tmp_path, SMALL, "good.yaml")
    bad = write(tmp_path, "version: 2\n", "bad.yaml")
    status, out, _ = run(capsys, "check", bad, good)
    assert status == 1
    assert re.search(rf"^{re.escape(bad)}:1:10: .*version", out, re.M), out
    assert f"OK: {good} (2 sites, 2 roles, 0 tests, policy " in out


def test_check_of_a_missing_file_says_so(capsys, tmp_path):
    status, out, _ = run(capsys, "check", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert re.match(rf"{re.escape(str(tmp_path))}/nope\.yaml:1:1: .*cannot read", out), out


# ---- explain ----------------------------------------------------------------

# Each row: explain arguments (after FILE) -> fields the JSON must have.
EXPLAIN_CASES = [
    pytest.param(
        ["--user", "zoe", "--url", "https://www.linkedin.com/feed/"],
        dict(decision="allow", reason="allowed", site="linkedin", level="read-only",
             role="everyone", rule="roles.everyone.access.linkedin", roles=["everyone"]),
        id="a-user-gets-their-roles-grant",
    ),
    pytest.param(
        ["--url", "https://www.linkedin.com/feed/"],
        dict(decision="block", reason="unauthenticated", user=None, roles=[]),
        id="no-user-means-anonymous",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.facebook.com/", "--at", "2026-11-25T12:30:00"],
        dict(decision="allow", reason="allowed", at="2026-11-25T12:30:00+01:00"),
        id="a-time-without-offset-is-in-the-policy-zone",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.facebook.com/", "--at", "2026-11-25T12:30:00+00:00"],
        dict(decision="block", reason="outside-window", opens_at="2026-11-26T12:00:00+01:00"),
        id="a-time-with-offset-is-that-instant-and-says-when-it-opens",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.facebook.com/", "--at", "2026-11-25T12:30", "--quota-used", "20"],
        dict(decision="block", reason="quota-exhausted", opens_at="2026-11-26T12:00:00+01:00"),
        id="quota-used-up-blocks-until-the-next-window",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.linkedin.com/voyager/api/x", "--method", "post"],
        dict(decision="block", reason="read-only", method="POST"),
        id="read-only-blocks-a-write-in-any-case",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.linkedin.com/checkpoint/lg/login-submit?x=1", "--method", "POST"],
        dict(decision="allow", reason="allowed"),
        id="read-only-allow-rules-ignore-the-query",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.linkedin.com/feed/", "--header", "X-HTTP-Method-Override: DELETE"],
        dict(decision="block", reason="read-only"),
        id="a-method-override-header-is-a-write",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://www.example.org/", "--header", "Host: www.reddit.com"],
        dict(decision="block", reason="denied", site="reddit", host="www.reddit.com",
             hosts=["www.example.org", "www.reddit.com"]),
        id="a-host-header-is-decided-too-and-the-strictest-stands",
    ),
    pytest.param(
        ["--user", "zoe", "--url", "https://mallory:pw@WWW.LinkedIn.COM.:443/feed/"],
        dict(decision="allow", site="linkedin", host="www.linkedin.com", hosts=["WWW.LinkedIn.COM.:443"]),
        id="userinfo-is-stripped-and-the-host-normalized",
    ),
    pytest.param(
        ["--url", "https://www.youtube.com/youtubei/v1/player", "--method", "POST", "--client-ip", "10.20.30.9"],
        dict(decision="allow", role="kiosk", roles=["kiosk"], client_ip="10.20.30.9"),
        id="a-client-ip-gives-net-roles",
    ),
    pytest.param(
        ["--user", "alice", "--url", "https://intranet.example.com/"],
        dict(decision="allow", reason="unlisted", site=None, site_name=None, level=None, rule="unlisted"),
        id="a-host-in-no-site-is-unlisted",
    ),
    pytest.param(
        ["--user", "alice", "--url", "www.tiktok.com/upload", "--method", "PUT"],
        dict(decision="allow", site="tiktok", site_name="TikTok", level="full", role="communications",
             roles=["communications", "everyone"]),
        id="a-url-without-scheme-is-read-as-http",
    ),
]


@pytest.mark.parametrize("args, want", EXPLAIN_CASES)
def test_explain_json(capsys, args, want):
    status, out, _ = run(capsys, "explain", EXAMPLE, *args, "--json")
    assert status == 0
    got = json.loads(out)
    assert {k: got[k] for k in want} == want
    for key in ("decision", "reason", "site", "level", "rule", "role", "roles", "host", "opens_at", "policy"):
        assert key in got
    assert re.fullmatch(r"[0-9a-f]{64}", got["policy"])


def test_explain_text_names_everything_that_decided(capsys):
    status, out, _ = run(
        capsys, "explain", EXAMPLE, "--user", "zoe", "--url", "https://m.facebook.com/",
        "--at", "2026-11-28T12:30:00",
    )
    assert status == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if re.match(r"\S", line))
    assert fields["decision"] == "block"
    assert fields["reason"] == "outside-window"
    assert fields["site"] == "Facebook (facebook)"  # the catalog's display name, and the key
    assert fields["level"] == "full"
    assert fields["role"] == "everyone"
    assert fields["rule"] == "roles.everyone.access.facebook"
    assert fields["roles"] == "everyone"
    assert fields["host"] == "m.facebook.com"
    assert fields["at"] == "Sat 2026-11-28 12:30:00 CET (Europe/Berlin)"
    # Saturday's block lifts when Monday's window opens, not on Sunday.
    assert fields["opens at"] == "Mon 2026-11-30 12:00:00 CET (Europe/Berlin)"
    assert re.fullmatch(r"[0-9a-f]{12}", fields["policy"])


NIGHT_SHIFT = """\
version: 1
timezone: Europe/Berlin
sites:
  youtube: {domains: [youtube.com]}
directory:
  groups:
    night: [nora]
roles:
  night:
    members: ["group:night"]
    access:
      youtube: {level: full, windows: ["mon-fri 22:00-24:00"]}
  everyone:
    members: [all]
    access:
      "*": deny
unauthenticated: deny
"""


def test_explain_shows_the_reason_and_when_access_opens_whatever_a_catch_all_deny_says(capsys, tmp_path):
    policy = write(tmp_path, NIGHT_SHIFT)
    status, out, _ = run(capsys, "explain", policy, "--user", "nora", "--url", "https://www.youtube.com/",
                         "--at", "2026-11-24T01:30")
    assert status == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if re.match(r"\S", line))
    assert (fields["decision"], fields["reason"]) == ("block", "outside-window")
    assert (fields["role"], fields["rule"]) == ("night", "roles.night.access.youtube")
    assert fields["site"] == "youtube"  # no display name: the key alone
    assert fields["opens at"] == "Tue 2026-11-24 22:00:00 CET (Europe/Berlin)"
    assert "mon-fri 22:00-24:00" in out
    status, out, _ = run(capsys, "explain", policy, "--user", "nora", "--url", "https://www.youtube.com/",
                         "--at", "2026-11-24T01:30", "--json")
    got = json.loads(out)
    assert (got["reason"], got["opens_at"]) == ("outside-window", "2026-11-24T22:00:00+01:00")


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--url", "https://x.com/", "--at", "tomorrow"], "'tomorrow' is not an ISO time", id="bad-time"),
        pytest.param(["--url", "https://x.com/", "--client-ip", "10.0.0.300"], "not an IP address", id="bad-client-ip"),
        pytest.param(["--url", "ftp://x.com/"], "not an http:// or https:// URL", id="bad-scheme"),
        pytest.param(["--url", "https://x.com/", "--header", "no colon"], "is not 'Name: value'", id="bad-header"),
        pytest.param(["--url", "https://x.com/", "--quota-used", "-1"], "0 or more", id="negative-quota"),
    ],
)
def test_explain_refuses_bad_input_with_exit_2(capsys, args, message):
    status, out, err = run(capsys, "explain", EXAMPLE, *args)
    assert status == 2
    assert out == ""
    assert message in err


# ---- test -------------------------------------------------------------------


def test_test_passes_a_policy_whose_cases_hold(capsys, tmp_path):
    path = write(tmp_path, SMALL + textwrap.dedent("""\
        tests:
          - {user: alice, url: "https://www.facebook.com/", method: POST, expect: allow}
          - {user: bob, url: "https://www.facebook.com/", at: "2026-11-28T12:00:00", expect: block, reason: outside-window}
        """))
    status, out, _ = run(capsys, "test", path)
    assert (status, out) == (0, "2 passed, 0 failed\n")


def test_test_names_each_failing_case_with_want_and_got(capsys, tmp_path):
    path = write(tmp_path, SMALL + textwrap.dedent("""\
        tests:
          - {user: alice, url: "https://www.facebook.com/", method: POST, expect: allow}
          - {name: bob posts, user: bob, url: "https://www.linkedin.com/", method: POST, expect: allow}
          - {user: bob, url: "https://www.facebook.com/", at: "2026-11-25T12:00:00", expect: block, reason: outside-window}
        """))
    status, out, _ = run(capsys, "test", path)
    assert status == 1
    assert out == textwrap.dedent(f"""\
        {path}:27: FAIL bob posts
          case: bob POST https://www.linkedin.com/
          want: allow (any reason)
          got:  block (read-only) by rule roles.everyone.access.linkedin
        {path}:28: FAIL
          case: bob GET https://www.facebook.com/ at 2026-11-25T12:00:00
          want: block (outside-window)
          got:  allow (allowed) by rule roles.everyone.access.facebook
        1 passed, 2 failed
        """)


def test_test_without_cases_says_so_and_passes(capsys, tmp_path):
    path = write(tmp_path, SMALL)
    status, out, _ = run(capsys, "test", path)
    assert status == 0
    assert "the policy has no tests" in out


@pytest.mark.parametrize("command", ["check", "explain", "test"])
def test_an_invalid_policy_fails_every_command_with_its_problems(capsys, tmp_path, command):
    path = write(tmp_path, SMALL.replace("unlisted: allow", "unlisted: maybe"))
    extra = ["--url", "https://x.com/"] if command == "explain" else []
    status, out, err = run(capsys, command, path, *extra)
    assert status == 1
    # The wording is the loader's; the location and the culprit are the contract.
    assert re.search(rf"^{re.escape(path)}:24:11: .*'maybe'", out + err, re.M), out + err


# ---- the installed script ----------------------------------------------------


def test_the_installed_script_runs_the_example_policys_tests():
    script = Path(sys.executable).with_name("accessgate")
    done = subprocess.run(
        [str(script), "test", "-v", "policy/example.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"(\d+) passed, 0 failed", lines[-1])
    assert all(re.match(r"policy/example\.yaml:\d+: ok ", line) for line in lines[:-1])
    assert len(lines) - 1 == int(lines[-1].split()[0])


# ---- the real CLI on files an insider may write ------------------------------------


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("accessgate")
    return subprocess.run([str(script), *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


COMMANDS = {
    "check": [],
    "test": [],
    "explain": ["--url", "https://www.facebook.com/", "--user", "alice"],
}
ZONES = ["Europe", "Europe/", "America/Argentina", "zone.tab", "../../../etc/passwd", "/etc/localtime"]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_time_zone_that_is_no_zone_is_a_located_problem_in_every_command(tmp_path, command, zone):
    path = write(tmp_path, SMALL.replace("timezone: Europe/Berlin", f'timezone: "{zone}"'))
    done = cli(command, path, *COMMANDS[command])
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert re.search(rf"^{re.escape(path)}:2:11: unknown timezone '{re.escape(zone)}'", output, re.M), output


SECRETS = "root:x:0:0:root:/root:/bin/bash\nalice:$6$s3cr3tSALT$s3cr3tHASH:19000:0:99999:7:::\n"


@pytest.mark.parametrize("include, prepare", [
    ("/etc/passwd", lambda folder: None),
    ("../secrets/shadow", lambda folder: (folder.parent / "secrets").mkdir() or
     (folder.parent / "secrets" / "shadow").write_text(SECRETS)),
    ("shadow.yaml", lambda folder: (folder / "shadow.yaml").write_text(SECRETS)),
    ("link.yaml", lambda folder: (folder.parent / "s").write_text(SECRETS) or
     (folder / "link.yaml").symlink_to(folder.parent / "s")),
    ("env.yaml", lambda folder: (folder / "env.yaml").write_text("API_TOKEN: s3cr3t-token\nroot: x:0:0\n")),
], ids=["absolute-system-file", "relative-path-out-of-the-folder", "password-file-in-the-folder",
        "link-out-of-the-folder", "secrets-as-yaml-keys"])
def test_check_never_prints_what_an_include_holds_unless_it_is_policy(tmp_path, include, prepare):
    folder = tmp_path / "policy"
    folder.mkdir()
    prepare(folder)
    path = write(folder, SMALL.replace("unlisted: allow", f'unlisted: allow\ninclude: ["{include}"]'))
    done = cli("check", path)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    for secret in ("root:x", "s3cr3t", "/bin/bash", "API_TOKEN", "$6$"):
        assert secret not in output, output


def test_check_warns_about_a_role_only_one_person_has(tmp_path):
    text = SMALL.replace('''  everyone:
    members: [all]''', '''  ceo:
    members: ["user:Zoe"]
    access: {facebook: full}
  everyone:
    members: [all]''')
    done = cli("check", write(tmp_path, text))
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith("OK: ")
    # pr has one person too (group pr is [alice]); everyone is all.
    assert [re.sub(r"^.*?:(\d+):\d+: warning: (role '\w+').*$", r"\1 \2", l) for l in lines[1:]] == [
        "14 role 'pr'", "18 role 'ceo'"]
    assert "has one member ('zoe')" in lines[2]


def test_explain_reads_a_login_in_any_case_as_the_policy_does(capsys):
    outs = []
    for user in ("alice", "ALICE", "Alice"):
        status, out, _ = run(capsys, "explain", EXAMPLE, "--user", user, "--url", "https://www.facebook.com/",
                             "--method", "POST", "--at", "2026-11-23T09:00", "--json")
        assert status == 0
        outs.append(json.loads(out))
    assert outs[0]["decision"] == "allow" and outs[0]["role"] == "communications"
    assert all(o["decision"] == outs[0]["decision"] and o["role"] == outs[0]["role"] for o in outs)


def test_explain_shows_a_warn_grant_and_what_happens_before_and_after_a_reason(capsys):
    url = ("--url", "https://www.instagram.com/", "--user", "zoe", "--at", "2026-11-25T10:00:00")
    status, out, _ = run(capsys, "explain", EXAMPLE, *url)
    assert status == 0
    assert re.search(r"^reason\s+justification-required$", out, re.M) and re.search(r"^level\s+warn$", out, re.M)
    assert "a reason given there opens instagram for 30 minutes" in out
    status, out, _ = run(capsys, "explain", EXAMPLE, *url, "--continued", "--json")
    data = json.loads(out)
    assert (data["decision"], data["level"], data["rule"], data["continue_minutes"]) == (
        "allow", "warn", "roles.everyone.access.instagram+continued", 30)


# ---- explain --body / --operation (issue 21) -----------------------------------------

META = str(ROOT / "policy" / "read-only-meta.yaml")  # zoe reads facebook under the catalog's operation rules
GRAPHQL_URL = ["--user", "zoe", "--url", "https://www.facebook.com/api/graphql/", "--method", "POST"]
FORM_HEADER = ["--header", "Content-Type: application/x-www-form-urlencoded"]


def friendly(name: str) -> list[str]:
    return ["--header", f"X-FB-Friendly-Name: {name}"]


def form_body(name: str) -> bytes:
    return f"av=1&fb_api_req_friendly_name={name}&doc_id=1".encode()


@pytest.mark.parametrize("header, body, want", [
    ("CometNewsFeedPaginationQuery", form_body("CometNewsFeedPaginationQuery"),
     ("allow", "allowed", "CometNewsFeedPaginationQuery")),
    ("ComposerStoryCreateMutation", form_body("ComposerStoryCreateMutation"),
     ("block", "read-only", "ComposerStoryCreateMutation")),
    ("CometNewsFeedPaginationQuery", form_body("ComposerStoryCreateMutation"),
     ("block", "read-only", "CometNewsFeedPaginationQuery / ComposerStoryCreateMutation")),
    ("CometNewsFeedPaginationQuery", form_body("CometNewsFeedPaginationQuery") + b"&pad=" + b"x" * 70_000,
     ("block", "read-only", "CometNewsFeedPaginationQuery")),
], ids=["a-read", "a-post", "names-disagree", "over-the-limit"])  # fmt: skip
def test_explain_decides_on_a_body(capsys, tmp_path, header, body, want):
    path = tmp_path / "body"
    path.write_bytes(body)
    status, out, _ = run(capsys, "explain", META, *GRAPHQL_URL, *FORM_HEADER, *friendly(header),
                         "--body", str(path), "--json")
    got = json.loads(out)
    assert status == 0 and (got["decision"], got["reason"], got.get("operation")) == want


def test_explain_reads_the_body_from_standard_input(capsys, monkeypatch):
    import io

    name = "CometNewsFeedPaginationQuery"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(form_body(name))))
    status, out, _ = run(capsys, "explain", META, *GRAPHQL_URL, *FORM_HEADER, *friendly(name), "--body", "-", "--json")
    assert status == 0 and json.loads(out)["decision"] == "allow"


@pytest.mark.parametrize("operation, want", [
    ("CometNewsFeedPaginationQuery", "allow"),
    ("ComposerStoryCreateMutation", "block"),
])  # fmt: skip
def test_explain_decides_on_an_operation_written_down(capsys, operation, want):
    status, out, _ = run(capsys, "explain", META, *GRAPHQL_URL, "--operation", operation, "--json")
    got = json.loads(out)
    assert status == 0 and (got["decision"], got["operation"]) == (want, operation)


def test_explain_takes_a_body_or_an_operation_not_both(capsys, tmp_path):
    path = tmp_path / "body"
    path.write_bytes(b"x")
    status, _, err = run(capsys, "explain", META, *GRAPHQL_URL, "--body", str(path), "--operation", "XQuery")
    assert status == 2 and "not both" in err
