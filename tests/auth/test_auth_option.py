"""The accessgate_auth option value: methods in order, or a message that says what to write."""

import pytest

from accessgate.auth.options import MethodSpec, parse_auth_option


@pytest.mark.parametrize(
    "value, expected",
    [
        pytest.param("", (), id="empty-means-no-sign-in"),
        pytest.param("  ", (), id="blank-means-no-sign-in"),
        pytest.param("negotiate,ldap", (MethodSpec("negotiate"), MethodSpec("ldap")), id="order-kept"),
        pytest.param("ldap, negotiate", (MethodSpec("ldap"), MethodSpec("negotiate")), id="spaces-allowed"),
        pytest.param("LDAP", (MethodSpec("ldap"),), id="case-insensitive-kind"),
        pytest.param("htpasswd:/etc/ag/htpasswd", (MethodSpec("htpasswd", "/etc/ag/htpasswd"),), id="htpasswd-path"),
        pytest.param("htpasswd:C:/ag/pw", (MethodSpec("htpasswd", "C:/ag/pw"),), id="path-with-a-colon"),
        pytest.param("negotiate:/etc/krb5.keytab,htpasswd:/p",
                     (MethodSpec("negotiate", "/etc/krb5.keytab"), MethodSpec("htpasswd", "/p")), id="keytab"),
    ],
)
def test_valid_values(value, expected):
    assert parse_auth_option(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param("negotiate,,ldap", r"item 2 is empty", id="double-comma"),
        pytest.param("negotiate,", r"item 2 is empty", id="trailing-comma"),
        pytest.param("ldpa", r"unknown sign-in method 'ldpa'; did you mean 'ldap'\?", id="typo-suggests"),
        pytest.param("kerberos", r"unknown sign-in method 'kerberos'; use negotiate, ldap, htpasswd", id="unknown"),
        pytest.param("htpasswd", r"'htpasswd' needs the file", id="htpasswd-without-file"),
        pytest.param("htpasswd:", r"'htpasswd' needs the file", id="htpasswd-empty-file"),
        pytest.param("ldap:server", r"'ldap' takes no argument; .* directory.ldap", id="ldap-argument"),
        pytest.param("negotiate:", r"needs a keytab after the colon", id="negotiate-empty-keytab"),
        pytest.param("ldap,ldap", r"'ldap' is named twice", id="twice"),
        pytest.param("htpasswd:/a,htpasswd:/b", r"'htpasswd' is named twice", id="two-files"),
    ],
)
def test_invalid_values_say_what_to_write(value, message):
    with pytest.raises(ValueError, match=message):
        parse_auth_option(value)
