"""Inbox hygiene: which directory entries are read, how, and how their names are shown.

The inbox is a folder other programs write into, so nothing in it is trusted, names included:

* Only regular files are read. A symbolic link is never followed (a link to ``/etc/group``
  would publish that file as "papers", and a reason would quote its lines); a FIFO would
  block the run forever; a socket or a device is nothing a digest can be. They are classified
  from ``lstat`` and never opened.
* A regular file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``
  on the open descriptor: an entry swapped for a link or a FIFO between the listing and the
  open is refused, and the open itself never blocks.
* Names are shown, logged and stored in a printable escaped form (:func:`printable_path`),
  never raw: a name that is not valid UTF-8 (Python holds its bytes as surrogate escapes,
  which a database or a terminal refuses) or that holds a newline would otherwise crash a run
  or split a one-line reason. Such names are quarantined unread (:func:`name_problem`): a
  rename cures them, and the file is then read like any other.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import unicodedata
from pathlib import Path

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for undecodable bytes


class SpecialFile(enum.Enum):
    """An inbox entry that is not a regular file; the value is how a report names it."""

    SYMLINK = "a symbolic link"
    DIRECTORY = "a folder"
    FIFO = "a named pipe (FIFO)"
    SOCKET = "a socket"
    CHAR_DEVICE = "a character device"
    BLOCK_DEVICE = "a block device"
    OTHER = "a special file"

    @classmethod
    def of(cls, mode: int) -> SpecialFile | None:
        """The kind of entry a ``st_mode`` describes; None for a regular file."""
        if stat.S_ISREG(mode):
            return None
        for test, kind in _KINDS:
            if test(mode):
                return kind
        return cls.OTHER

    def skip_reason(self, shown: str) -> str:
        """The one-line reason a report gives; never names a link's target."""
        if self is SpecialFile.SYMLINK:
            return f"{shown}: {self.value}, not followed (only regular files are read)"
        return f"{shown}: {self.value}, not a regular file; not opened"


_KINDS = (
    (stat.S_ISLNK, SpecialFile.SYMLINK),
    (stat.S_ISDIR, SpecialFile.DIRECTORY),
    (stat.S_ISFIFO, SpecialFile.FIFO),
    (stat.S_ISSOCK, SpecialFile.SOCKET),
    (stat.S_ISCHR, SpecialFile.CHAR_DEVICE),
    (stat.S_ISBLK, SpecialFile.BLOCK_DEVICE),
)


class NotRegularFile(OSError):
    """The entry turned out not to be a regular file when opened (it was swapped after the
    listing); ``kind`` says what it is."""

    def __init__(self, path: Path, kind: SpecialFile) -> None:
        super().__init__(f"{printable_path(path)}: {kind.value}")
        self.kind = kind


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of the regular file ``path``.

    Raises NotRegularFile when ``path`` is a symbolic link (``O_NOFOLLOW``) or anything but a
    regular file (``fstat`` on the descriptor), OSError when it cannot be read. Reading one
    byte past the limit lets the caller see that a file grew beyond it after ``lstat``.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, SpecialFile.SYMLINK) from None
        if exc.errno == errno.ENXIO:  # a socket (open() refuses them), or a device without
            mode = os.lstat(path).st_mode  # a driver: say which from the entry itself
            raise NotRegularFile(path, SpecialFile.of(mode) or SpecialFile.OTHER) from None
        raise
    with open(fd, "rb", closefd=True) as f:
        kind = SpecialFile.of(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotRegularFile(path, kind)
        return f.read(max_bytes + 1)


def printable_path(path: Path | str) -> str:
    """``path`` as reports, logs and the database show it: one printable line.

    Undecodable bytes become ``\\xNN``, control and other invisible characters (line and
    paragraph separators, bidirectional overrides, …) ``\\n``, ``\\xNN`` or ``\\uNNNN``, and a
    backslash ``\\\\`` so that the form stays unambiguous. An ordinary name is unchanged.
    """
    text = str(path)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def name_problem(path: Path) -> str | None:
    """Why the file's name is refused, or None: not valid UTF-8, or control characters.

    Other invisible characters are only escaped when shown: a no-break space in a name is a
    nuisance, not a hazard.
    """
    name = path.name
    if any(unicodedata.category(ch) == "Cs" for ch in name):  # os.fsdecode's escapes
        return "is not valid UTF-8"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "holds control characters"
    return None
