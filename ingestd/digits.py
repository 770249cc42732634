"""One test for "a run of ASCII digits", for every place that reads an integer from text it was sent.

`str.isdigit()` alone admits characters that `int()` refuses ('²', '①'), so a header, an environment
variable or a venue field holding one would pass the check and then crash the `int()` behind it
(the Bybit and Polymarket decoders did, until a fuzzer found it). `str.isdecimal()` is no better a
fit: it admits non-ASCII digits ('٣'), which no wire format or file read here uses.
"""

from __future__ import annotations


def is_ascii_digits(text: str) -> bool:
    """True for a non-empty string of 0-9 only: exactly what `int()` reads as a plain number."""
    return text.isascii() and text.isdigit()
