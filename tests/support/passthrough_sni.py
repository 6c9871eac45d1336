"""A mitmproxy test script: ask for TLS passthrough of every SNI that `passthrough_sni` matches.

Like the addons people write to let certificate-pinning apps through
unread, it sets `ignore_connection` in `tls_clienthello`.  Loaded after
accessgate, it decides after accessgate's own hook has run.
"""

from __future__ import annotations

import re

from mitmproxy import ctx, tls


class PassthroughSni:
    def load(self, loader) -> None:
        loader.add_option("passthrough_sni", str, "", "Regex of SNI names to relay unread.")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        sni = data.client_hello.sni or ""
        if ctx.options.passthrough_sni and re.search(ctx.options.passthrough_sni, sni):
            data.ignore_connection = True


addons = [PassthroughSni()]
