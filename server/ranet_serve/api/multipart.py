"""Multipart form bodies read into memory: python-multipart's parser, without files on disk.

Why not Starlette's form parser: it wraps every file part in an `UploadFile` over a
`SpooledTemporaryFile` (Python objects and an async read per image, and a spill to `/tmp` past 1 MB),
while an image here is at most `max_image_bytes` and a whole body at most `max_body_bytes`, both held
in memory anyway to be decoded. The body limit bounds what this keeps, and nothing touches the disk
(a read-only root filesystem with a small `/tmp` stays safe under concurrent large uploads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ranet_serve.errors import InvalidInputError, PayloadTooLargeError

# RFC 2046 (section 5.1.1) allows 70 characters; the parser reads up to 256 and raised a ValueError
# (a 500) beyond: longer boundaries are refused here as the malformed input they are.
MAX_BOUNDARY_LENGTH = 256

# A part without a filename is a text field: an image sent that way fails as one, so say how to send it.
_FILE_HINT = " (a file part needs a filename in its Content-Disposition)"
MAX_FIELD_BYTES = 64 * 1024  # a knob's value; an image part is bounded by the body limit only
# Header values up to this long are parsed once (`_options`): a client sends the same Content-Type and
# Content-Disposition on every request, and parsing them took about 3% of a front-end's CPU per
# single-image request (py-spy, 16 hey clients). The cap bounds the cache: 512 entries of at most 256 bytes.
CACHED_HEADER_BYTES = 256


def _options(value: str | bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """`parse_options_header`, cached for short values. Callers must not change the returned dict."""
    if len(value) <= CACHED_HEADER_BYTES:
        return _cached_options(value)
    return parse_options_header(value)


@lru_cache(maxsize=512)
def _cached_options(value: str | bytes) -> tuple[bytes, dict[bytes, bytes]]:
    return parse_options_header(value)


@dataclass
class FormParts:
    """The parts of one body, in order: files as (field, bytes), fields as (name, text)."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Part:
    name: str = ""
    filename: bool = False
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def read_form(content_type: str, body: Iterable[bytes], *, max_files: int, max_fields: int) -> FormParts:
    """Parse a `multipart/form-data` body given as its chunks.

    Raises InvalidInputError (malformed body, too many fields, a field over 64 KiB) or
    PayloadTooLargeError (more than `max_files` files); the body's own size limit is its reader's
    (`api.body.receive_chunks`).
    """
    _, options = _options(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInputError("malformed multipart body: the Content-Type names no boundary")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise InvalidInputError(
            f"malformed multipart body: its boundary has {len(boundary)} characters, over the "
            f"{MAX_BOUNDARY_LENGTH} this server reads (RFC 2046 allows 70)"
        )
    parts = FormParts()
    current = _Part()
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    finished = False

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        disposition, params = _options(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidInputError("malformed multipart body: a part has no form-data name")
        current.name = params[b"name"].decode("utf-8", "replace")
        current.filename = b"filename" in params
        if current.filename and len(parts.files) >= max_files:
            raise PayloadTooLargeError(
                f"too many files in one request; at most {max_files - 1} images are allowed",
                limit=max_files - 1,
            )
        if not current.filename and len(parts.fields) >= max_fields:
            raise InvalidInputError(f"malformed multipart body: more than {max_fields} form fields")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.size += end - start
        if not current.filename and current.size > MAX_FIELD_BYTES:
            raise InvalidInputError(
                f"malformed multipart body: form field {current.name[:40]!r} is over 64 KiB{_FILE_HINT}"
            )
        current.chunks.append(data[start:end])

    def on_part_end() -> None:
        value = b"".join(current.chunks)
        if current.filename:
            parts.files.append((current.name, value))
        else:
            try:
                parts.fields.append((current.name, value.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"form field {current.name[:40]!r} is not UTF-8 text{_FILE_HINT}"
                ) from exc

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_end": on_end,
        },
    )
    try:
        for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInputError(f"malformed multipart body: {exc}") from exc
    if not finished:
        raise InvalidInputError("malformed multipart body: it ends before its closing boundary")
    return parts
