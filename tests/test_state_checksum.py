"""The state's one integrity format (dagrun/state/__init__.py): a crc32 over what it covers."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest

from dagrun.state import Sealer, seal_line, unseal, unseal_line, write_sealed


def test_a_sealed_file_reads_back_and_one_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_sealed(str(path), b"some state")
    raw = path.read_bytes()
    assert raw == b"some state" + zlib.crc32(b"some state").to_bytes(4, "little")
    assert unseal(raw) == b"some state"
    for pos in range(len(raw)):
        damaged = bytearray(raw)
        damaged[pos] ^= 0x01
        assert unseal(bytes(damaged)) is None, pos
    assert unseal(b"abc") is None  # shorter than its checksum
    assert not list(tmp_path.glob("*.tmp"))


def test_blobs_sealed_one_after_the_other_are_one_sealed_file() -> None:
    f = io.BytesIO()
    sealer = Sealer(f)
    for blob in (b"magic\n", b"part one", memoryview(b"part two")):
        sealer.write(blob)
    sealer.close()
    assert unseal(f.getvalue()) == b"magic\npart onepart two"


def test_a_log_line_carries_the_same_checksum_in_hex() -> None:
    line = seal_line(b'{"start":"cc"')
    assert line == b'{"start":"cc","crc":"%08x"}\n' % zlib.crc32(b'{"start":"cc"')
    assert unseal_line(line.rstrip(b"\n")) == b'{"start":"cc"'


@pytest.mark.parametrize("digits", [b"ABCDEF12", b"1234 678", b"+1234567", b"123456789"[:7]])
def test_a_log_line_with_anything_but_8_lowercase_hex_digits_is_refused(digits: bytes) -> None:
    assert unseal_line(b'{"start":"cc","crc":"' + digits + b'"}') is None
