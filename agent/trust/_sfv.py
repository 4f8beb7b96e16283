"""RFC 8941 structured field values: the strict subset the request-signature profile needs.

Pure: text in, values out; no I/O, no clock, no randomness. :mod:`agent.httpsig` is the only
user; it turns every :class:`SFError` into an :class:`~agent.errors.AuthError` with a profile code.

Rules this parser enforces (stricter than RFC 8941 where noted, never looser):

* Only dictionaries are parsed (RFC 8941 §4.2.2), with items and inner lists as members and
  parameters on both; no Date or Display String (RFC 9651).
* Duplicate dictionary keys and parameter names are *kept*, in order, so the caller can refuse
  them; RFC 8941 would let the last one win.
* sf-tokens come back as :class:`Token`, a ``str`` subclass, so a token where a string is
  required is detectable (``type(value) is str`` is true for strings only).
* Byte sequences must be canonical padded base64 (RFC 4648 §4: ``=`` padding present, unused
  bits zero); RFC 8941's leniency about missing padding is not extended.
* Whitespace is accepted only where RFC 8941 §4.2 allows it; integers have at most 15 digits,
  decimals at most 12 integer and 1-3 fractional digits; strings are printable ASCII.
* The serialiser (RFC 8941 §4.1) emits sf-strings and sf-integers only and refuses anything it
  could not emit canonically.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "Bare",
    "InnerList",
    "Item",
    "Member",
    "Params",
    "SFError",
    "Token",
    "parse_dictionary",
    "serialize_inner_list",
    "serialize_string",
]

_KEY_RE = re.compile(r"[a-z*][a-z0-9_.*-]*")
_DIGIT = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TCHAR = _DIGIT | _ALPHA | frozenset("!#$%&'*+-.^_`|~")


class Token(str):
    """An sf-token, kept apart from an sf-string so a type confusion is detectable."""

    __slots__ = ()


Bare = int | bool | Decimal | str | bytes  # Token is a str; bool is checked before int
Params = list[tuple[str, Bare]]  # a list, not a dict: duplicates must stay visible


@dataclass(frozen=True)
class Item:
    """An sf-item: a bare value and its parameters."""

    value: Bare
    params: Params


@dataclass(frozen=True)
class InnerList:
    """An inner list of items, with the list's own parameters."""

    items: list[Item]
    params: Params


Member = Item | InnerList


class SFError(ValueError):
    """The text is not a structured field this parser accepts; the message says where."""


class _Parser:
    """RFC 8941 §4.2 dictionary parser (no Date or Display String from RFC 9651)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _skip(self, chars: str) -> None:
        while self.i < len(self.s) and self.s[self.i] in chars:
            self.i += 1

    def dictionary(self) -> list[tuple[str, Member]]:
        self._skip(" ")
        members: list[tuple[str, Member]] = []
        while self.i < len(self.s):
            key = self._key()
            member: Member
            if self._peek() == "=":
                self.i += 1
                member = self._inner_list() if self._peek() == "(" else self._item()
            else:
                member = Item(True, self._params())
            members.append((key, member))
            self._skip(" \t")
            if self.i >= len(self.s):
                break
            if self._peek() != ",":
                raise SFError(f"expected ',' at offset {self.i}")
            self.i += 1
            self._skip(" \t")
            if self.i >= len(self.s):
                raise SFError("trailing comma")
        return members

    def _inner_list(self) -> InnerList:
        self.i += 1
        items: list[Item] = []
        while self.i < len(self.s):
            self._skip(" ")
            if self._peek() == ")":
                self.i += 1
                return InnerList(items, self._params())
            items.append(self._item())
            if self._peek() not in (" ", ")"):
                raise SFError(f"expected ' ' or ')' at offset {self.i}")
        raise SFError("unterminated inner list")

    def _item(self) -> Item:
        return Item(self._bare(), self._params())

    def _params(self) -> Params:
        params: Params = []
        while self._peek() == ";":
            self.i += 1
            self._skip(" ")
            key = self._key()
            value: Bare = True
            if self._peek() == "=":
                self.i += 1
                value = self._bare()
            params.append((key, value))
        return params

    def _key(self) -> str:
        m = _KEY_RE.match(self.s, self.i)
        if m is None:
            raise SFError(f"expected a key at offset {self.i}")
        self.i = m.end()
        return m.group()

    def _bare(self) -> Bare:
        c = self._peek()
        if c == "-" or c in _DIGIT:
            return self._number()
        if c == '"':
            return self._string()
        if c == ":":
            return self._bytes()
        if c == "?":
            flag = self.s[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise SFError(f"bad boolean at offset {self.i}")
            self.i += 2
            return flag == "1"
        if c == "*" or c in _ALPHA:
            start = self.i
            self.i += 1
            self._skip_tchar()
            return Token(self.s[start : self.i])
        raise SFError(f"unexpected {c!r} at offset {self.i}" if c else "unexpected end")

    def _skip_tchar(self) -> None:
        while self.i < len(self.s) and (self.s[self.i] in _TCHAR or self.s[self.i] in ":/"):
            self.i += 1

    def _number(self) -> int | Decimal:
        start = self.i
        if self._peek() == "-":
            self.i += 1
        digits_start = self.i
        if self._peek() not in _DIGIT:
            raise SFError(f"expected a digit at offset {self.i}")
        is_decimal = False
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in _DIGIT:
                self.i += 1
            elif c == "." and not is_decimal:
                if self.i - digits_start > 12:
                    raise SFError("decimal too long")
                is_decimal = True
                self.i += 1
            else:
                break
            if self.i - digits_start > (16 if is_decimal else 15):
                raise SFError("number too long")
        text = self.s[start : self.i]
        if not is_decimal:
            return int(text)
        fraction = text.rsplit(".", 1)[1]
        if not 1 <= len(fraction) <= 3:
            raise SFError("decimal needs 1 to 3 fractional digits")
        return Decimal(text)

    def _string(self) -> str:
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                nxt = self._peek()
                if nxt not in ('"', "\\"):
                    raise SFError(f"bad escape at offset {self.i}")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise SFError(f"bad character in string at offset {self.i - 1}")
            else:
                out.append(c)
        raise SFError("unterminated string")

    def _bytes(self) -> bytes:
        end = self.s.find(":", self.i + 1)
        if end < 0:
            raise SFError("unterminated byte sequence")
        text = self.s[self.i + 1 : end]
        self.i = end + 1
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise SFError("byte sequence is not base64") from exc
        if base64.b64encode(raw).decode("ascii") != text:
            raise SFError("byte sequence is not canonical padded base64")
        return raw


def parse_dictionary(text: str) -> list[tuple[str, Member]]:
    """Parse an RFC 8941 dictionary, keeping every member in order (duplicates included).

    Args:
        text: the field value, already trimmed of surrounding SP/HTAB by the caller.

    Returns:
        ``(key, member)`` pairs in the order received.

    Raises:
        SFError: the text is not a dictionary under the rules in the module docstring.
    """
    return _Parser(text).dictionary()


_PRINTABLE = re.compile(r"[ -~]*")


def serialize_string(value: str) -> str:
    """Serialise ``value`` as an sf-string (RFC 8941 §4.1.6).

    Raises:
        ValueError: ``value`` holds a character outside printable ASCII.
    """
    if not _PRINTABLE.fullmatch(value):  # one regex, not a generator per character
        raise ValueError(f"{value!r} is not printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_inner_list(strings: Sequence[str], params: Sequence[tuple[str, int | str]]) -> str:
    """Serialise an inner list of sf-strings with parameters (RFC 8941 §4.1.1.1).

    Args:
        strings: the members, in order; each becomes an sf-string without parameters.
        params: the list's parameters in the order they are to appear; ints and strings only.

    Raises:
        ValueError: a name is not an sf-key, or a value is not an sf-integer or printable string.
    """
    out = ["(", " ".join(serialize_string(s) for s in strings), ")"]
    for key, value in params:
        if _KEY_RE.fullmatch(key) is None:
            raise ValueError(f"{key!r} is not a structured-field key")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"parameter {key!r} must be an int or a str")
        if isinstance(value, int) and abs(value) >= 10**15:
            raise ValueError(f"parameter {key!r} is out of sf-integer range")
        out.append(
            f";{key}={value}" if isinstance(value, int) else f";{key}={serialize_string(value)}"
        )
    return "".join(out)
