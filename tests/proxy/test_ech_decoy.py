"""proxy/inspection.py: which Encrypted Client Hello may hide another server's name (and which is a browser's decoy)."""

from __future__ import annotations

import pytest

from accessgate.proxy.inspection import hides_a_name


@pytest.mark.parametrize(
    "snis, asked, hides",
    [
        (("www.example.test",), ["www.example.test:443", "www.example.test"], False),  # Chromium's decoy ECH
        (("WWW.Example.Test.",), ["www.example.test:443"], False),  # any spelling of the name asked for
        (("cloudflare-ech.com",), ["www.example.test:443"], True),  # real ECH: a public name not asked for
        (("www.example.test", "other.test"), ["www.example.test:443"], True),  # a second name not asked for
        ((), ["www.example.test:443"], True),  # no outer name at all
        (("bad..name",), ["bad..name"], True),  # no host name: nothing asked for matches it
        (("192.0.2.7",), ["192.0.2.7"], False),
    ],
)
def test_an_ech_extension_hides_a_name_unless_its_sni_is_the_name_asked_for(snis, asked, hides) -> None:
    assert hides_a_name(snis, asked) is hides
