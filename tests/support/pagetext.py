"""What a page says and which markup it has: for tests of the block and status pages."""

from __future__ import annotations

from html.parser import HTMLParser

# Markup a client could try to smuggle into a page through a URL, a host or a user name.
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>&amp;'

INLINE = {"strong", "a", "time", "b", "em"}


class Tags(HTMLParser):
    """Every start tag and attribute of a page, to prove no markup was injected."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in INLINE:
            self.text.append(" ")

    def handle_endtag(self, tag):
        if tag not in INLINE:
            self.text.append(" ")

    def handle_data(self, data):
        self.text.append(data)


def parse(body: bytes) -> Tags:
    tags = Tags()
    tags.feed(body.decode("utf-8"))
    return tags


def text_of(body: bytes) -> str:
    return " ".join("".join(parse(body).text).split())
