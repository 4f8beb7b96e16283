"""The one tar codec (agent/package/ustar.py): headers and pax records round-trip, and every
malformed header is refused with a reason the container and the payload parser can report."""

from __future__ import annotations

import pytest

from cutover.agent.package.ustar import (
    BLOCK,
    DIR,
    PAX,
    RECORD,
    REG,
    SYM,
    HeaderError,
    PaxError,
    archive_bytes,
    decode_header,
    decode_pax,
    encode_header,
    encode_member,
    member_bytes,
    padded,
    padding,
)


def test_header_round_trips_every_field_a_reader_uses() -> None:
    block = encode_header(b"app/index.php", REG, 1234, 0o755)
    assert len(block) == BLOCK
    header = decode_header(block)
    assert header is not None
    assert (header.name, header.mode, header.size, header.kind, header.link) == (
        b"app/index.php",
        0o755,
        1234,
        REG,
        b"",
    )
    assert not header.prefixed
    link = decode_header(encode_header(b"latest", SYM, 0, 0o777, b"run.sh"))
    assert link is not None and (link.kind, link.link) == (SYM, b"run.sh")


def test_sizes_of_8_gib_and_more_use_base_256() -> None:
    size = 8**11 + 5
    block = encode_header(b"payload.tar.zst", REG, size)
    assert block[124] == 0x80
    header = decode_header(block)
    assert header is not None and header.size == size


def test_owner_and_time_fields_are_fixed() -> None:
    """uid/gid 0, mtime 0, no owner names: nothing about the build machine leaks in."""
    block = encode_header(b"f", REG, 1)
    assert block[108:124] == b"0000000\x000000000\x00"
    assert block[136:148] == b"00000000000\x00"
    assert block[265:329] == bytes(64)


def test_a_zero_block_is_the_end_of_the_archive() -> None:
    assert decode_header(bytes(BLOCK)) is None


def _corrupt(block: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(block)
    out[offset : offset + len(value)] = value
    return bytes(out)


def _rechecksum(block: bytes) -> bytes:
    out = bytearray(block)
    out[148:156] = b" " * 8
    out[148:155] = b"%06o\x00" % sum(out)
    return bytes(out)


GOOD = encode_header(b"index.php", REG, 10)
BAD_HEADERS = {
    "gnu-magic": (_rechecksum(_corrupt(GOOD, 257, b"ustar  \x00")), "gnu"),
    "v7-no-magic": (_rechecksum(_corrupt(GOOD, 257, bytes(8))), "not_ustar"),
    "garbage": (b"\x01" * BLOCK, "not_ustar"),
    "stale-checksum": (_corrupt(GOOD, 0, b"x"), "checksum"),
    "size-not-octal": (_rechecksum(_corrupt(GOOD, 124, b"0000000001a\x00")), "number"),
    "size-leading-space": (_rechecksum(_corrupt(GOOD, 124, b" 0000000012\x00")), "number"),
    "size-digit-8": (_rechecksum(_corrupt(GOOD, 124, b"00000000018\x00")), "number"),
    "size-nul-inside": (_rechecksum(_corrupt(GOOD, 124, b"00000\x0000012\x00")), "number"),
    "mode-digit-9": (_rechecksum(_corrupt(GOOD, 100, b"0000649\x00")), "number"),
    "mode-underscore": (_rechecksum(_corrupt(GOOD, 100, b"000_644\x00")), "number"),
    "mode-not-octal": (_rechecksum(_corrupt(GOOD, 100, b"0000-44\x00")), "number"),
    "negative-base-256": (_rechecksum(_corrupt(GOOD, 124, b"\xff" + bytes(11))), "number"),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_malformed_headers_are_refused(name: str) -> None:
    block, code = BAD_HEADERS[name]
    with pytest.raises(HeaderError) as info:
        decode_header(block)
    assert info.value.code == code and str(info.value)


def test_the_ustar_prefix_is_joined_and_reported() -> None:
    block = bytearray(encode_header(b"name.php", REG, 0))
    block[345:351] = b"vendor"
    header = decode_header(_rechecksum(bytes(block)))
    assert header is not None and header.name == b"vendor/name.php" and header.prefixed


@pytest.mark.parametrize("length", [1, 5, 6, 7, 90, 94, 95, 96, 990, 995, 996, 997])
def test_pax_records_round_trip_across_length_digit_boundaries(length: int) -> None:
    """A record's length counts its own digits; values near 10**n are where it goes wrong."""
    name = "d/" + "x" * length
    member = encode_member(name, REG, 3)
    header = decode_header(member[:BLOCK])
    if len(name.encode()) <= 100:
        assert header is not None and header.kind == REG and header.name == name.encode()
        return
    assert header is not None and header.kind == PAX
    records = decode_pax(member[BLOCK : BLOCK + header.size])
    assert records == {"path": name.encode()}
    assert len(member) == member_bytes(name, REG, 3) - padded(3)


def test_pax_carries_non_ascii_and_long_names_and_links() -> None:
    member = encode_member("résumé", DIR, mode=0o755)
    header = decode_header(member[:BLOCK])
    assert header is not None and header.kind == PAX
    assert decode_pax(member[BLOCK : BLOCK + header.size]) == {"path": "résumé/".encode()}
    main = decode_header(member[-BLOCK:])
    assert main is not None and main.kind == DIR and main.name == b"r?sum?/"

    target = "../" + "t" * 120
    member = encode_member("link", SYM, mode=0o777, link=target)
    header = decode_header(member[:BLOCK])
    assert header is not None
    assert decode_pax(member[BLOCK : BLOCK + header.size]) == {"linkpath": target.encode()}


def test_short_ascii_members_need_no_pax() -> None:
    assert len(encode_member("app/Kernel.php", REG, 5)) == BLOCK
    assert member_bytes("app/Kernel.php", REG, 5) == 2 * BLOCK
    assert member_bytes("app", DIR) == BLOCK


BAD_PAX = {
    "length-too-long": (b"99 path=a\n", "malformed"),
    "length-too-short": (b"5 path=abc\n", "malformed"),
    "no-equals": (b"9 pathab\n", "malformed"),
    "no-newline": (b"10 path=ab ", "malformed"),
    "not-a-number": (b"x path=a\n", "malformed"),
    "repeated-key": (b"11 path=ab\n11 path=cd\n", "duplicate"),
}


@pytest.mark.parametrize("name", list(BAD_PAX))
def test_malformed_pax_records_are_refused(name: str) -> None:
    data, code = BAD_PAX[name]
    with pytest.raises(PaxError) as info:
        decode_pax(data)
    assert info.value.code == code


def test_archive_ends_with_the_marker_padded_to_a_record() -> None:
    assert archive_bytes(0) == RECORD
    assert archive_bytes(RECORD - 2 * BLOCK) == RECORD
    assert archive_bytes(RECORD - 2 * BLOCK + BLOCK) == 2 * RECORD
    assert (padding(0), padding(1), padding(512), padded(513)) == (0, 511, 0, 1024)


@pytest.mark.parametrize("kind", [REG, DIR, SYM], ids=["file", "dir", "symlink"])
@pytest.mark.parametrize("length", [1, 98, 99, 100, 101, 150])
@pytest.mark.parametrize("text", ["a", "é"], ids=["ascii", "non-ascii"])
def test_member_bytes_is_exactly_what_encode_member_writes(
    kind: int, length: int, text: str
) -> None:
    """The byte cap's no-pax shortcut agrees with the encoder at every name and link boundary."""
    path = "d/" + text * length
    size = 700 if kind == REG else 0
    link = "../" + text * length if kind == SYM else ""
    written = len(encode_member(path, kind, size, link=link)) + padded(size)
    assert member_bytes(path, kind, size, link) == written


def test_a_checksum_is_the_unsigned_sum_of_every_byte() -> None:
    """High bytes in the fields no reader uses (owner names, the tail) push the sum past what
    a 16-bit or signed sum would get right: the right checksum passes, one more is refused."""
    for filler in (b"\xff", b"\x80", bytes(range(256))):
        block = bytearray(encode_header(b"index.php", REG, 10))
        block[265:329] = (filler * 64)[:64]  # uname, gname: never read
        block[500:512] = (filler * 12)[:12]  # the header's unused tail
        block[148:156] = b" " * 8
        total = sum(block)
        block[148:155] = b"%06o\x00" % total
        header = decode_header(bytes(block))
        assert header is not None and header.name == b"index.php" and header.size == 10
        block[148:155] = b"%06o\x00" % (total + 1)
        with pytest.raises(HeaderError) as info:
            decode_header(bytes(block))
        assert info.value.code == "checksum"
