"""Multipart bodies are parsed in memory: right parts, right errors, and no file ever on disk."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from ranet_serve.api.multipart import CACHED_HEADER_BYTES, FormParts, read_form
from ranet_serve.errors import InvalidInputError, PayloadTooLargeError

CONTENT_TYPE = "multipart/form-data; boundary=xyz"


def body(*parts: tuple[str, bytes, bool]) -> bytes:
    out = b""
    for name, data, is_file in parts:
        filename = b'; filename="a.png"' if is_file else b""
        out += b'--xyz\r\nContent-Disposition: form-data; name="' + name.encode() + b'"' + filename + b"\r\n"
        out += (b"Content-Type: image/png\r\n" if is_file else b"") + b"\r\n" + data + b"\r\n"
    return out + b"--xyz--\r\n"


def parse(raw: bytes, chunk: int = 7, max_files: int = 9, max_fields: int = 4) -> FormParts:
    chunks = [raw[start : start + chunk] for start in range(0, len(raw), chunk)]
    return read_form(CONTENT_TYPE, chunks, max_files=max_files, max_fields=max_fields)


def test_files_and_fields_come_back_whole_however_the_body_is_chunked() -> None:
    image = bytes(range(256)) * 40
    raw = body(("files", image, True), ("top_k", b"3", False), ("files", b"\r\n--xy", True))
    for chunk in (1, 5, 4096, len(raw)):
        parts = parse(raw, chunk)
        assert parts.files == [("files", image), ("files", b"\r\n--xy")]
        assert parts.fields == [("top_k", "3")]


def test_large_uploads_never_touch_the_disk(monkeypatch: Any) -> None:
    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was created")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    image = b"\x89PNG" + b"\x00" * (3 << 20)  # well past Starlette's 1 MB spooling threshold
    assert parse(body(("file", image, True)), chunk=64 * 1024).files == [("file", image)]


@pytest.mark.parametrize(
    ("raw", "error", "words"),
    [
        (b"--xyz\r\nbroken", InvalidInputError, "malformed multipart"),
        (body(("file", b"x", True))[:-8], InvalidInputError, "before its closing boundary"),
        (body(*[("files", b"x", True)] * 10), PayloadTooLargeError, "at most 8 images"),
        (body(*[(f"k{i}", b"1", False) for i in range(5)]), InvalidInputError, "more than 4 form fields"),
        (body(("top_k", b"1" * 70_000, False)), InvalidInputError, "over 64 KiB"),
        (body(("top_k", b"\xff\xfe", False)), InvalidInputError, "not UTF-8"),
        (
            b"--xyz\r\nContent-Disposition: attachment\r\n\r\nx\r\n--xyz--\r\n",
            InvalidInputError,
            "no form-data",
        ),
    ],
    ids=["garbage", "truncated", "too-many-files", "too-many-fields", "big-field", "binary-field", "no-name"],
)
def test_bad_bodies_get_errors_that_say_what_is_wrong(raw: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        parse(raw)


def test_a_content_type_without_boundary_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="no boundary"):
        read_form("multipart/form-data", [b""], max_files=2, max_fields=2)


def test_header_values_parse_alike_whether_cached_or_too_long_to_cache() -> None:
    # Short header values are parsed once and cached (the same client sends the same headers); a long
    # filename takes the uncached path. Both give the same parts, request after request.
    long_name = "x" * (CACHED_HEADER_BYTES + 10)
    for filename in ("a.png", long_name, "a.png", long_name):
        raw = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="'
            + filename.encode()
            + b'"\r\n\r\nPIXELS\r\n'
            + b'--xyz\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n2\r\n--xyz--\r\n'
        )
        parts = parse(raw)
        assert parts.files == [("file", b"PIXELS")] and parts.fields == [("top_k", "2")]
    long_type = CONTENT_TYPE + "; charset=" + "u" * CACHED_HEADER_BYTES
    parts = read_form(long_type, [body(("file", b"P", True))], max_files=9, max_fields=4)
    assert parts.files == [("file", b"P")]
