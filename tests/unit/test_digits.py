import pytest

from ingestd.digits import is_ascii_digits


@pytest.mark.parametrize("text", ["0", "7", "0042", "18446744073709551616"])
def test_plain_ascii_digits_pass_and_int_reads_them(text):
    assert is_ascii_digits(text) and int(text) >= 0


@pytest.mark.parametrize("text", ["", "²", "1²", "①", "٣", "１", " 1", "1 ", "+1", "-1", "1.0", "1_000", "0x1"])
def test_anything_else_fails(text):
    assert not is_ascii_digits(text)
