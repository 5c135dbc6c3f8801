"""cffi builder for ``pymqueue._pmq_c`` (API, out-of-line mode).

Run by setuptools through ``cffi_modules`` in setup.py; never imports pymqueue. Our own C files
in ``csrc/`` are compiled into the extension. The cdef is generated from ``pmq.h`` (the one
source of truth for the API): the part between the ``cdef begins``/``cdef ends`` markers,
without comments, with every ``#define NAME value`` turned into ``#define NAME ...`` so the
compiler, not this file, supplies the values.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "pmq.h"
SOURCES = ["segment.c", "lock.c", "wait.c", "ring.c", "index.c", "recover.c", "bell.c", "tasks.c"]

_BEGIN = "/* pmq_build.py: cdef begins */"
_END = "/* pmq_build.py: cdef ends */"
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+(.+)")
_INT = re.compile(r"\(?\s*(-?(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*\s*\)?")


def make_cdef(header: Path = HEADER) -> str:
    """The cdef for cffi, from the public header."""
    text = header.read_text()
    try:
        text = text[text.index(_BEGIN) + len(_BEGIN) : text.index(_END)]
    except ValueError:
        raise SystemExit(f"{header}: cdef markers {_BEGIN!r} / {_END!r} not found") from None
    text = _COMMENT.sub(" ", text)
    lines: list[str] = []
    literals: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            lines.append(line.rstrip())
            continue
        m = _DEFINE.fullmatch(stripped)
        if m is None:
            continue  # #include, #if…: nothing cffi needs
        name, value = m.group(1), m.group(2).strip()
        lines.append(f"#define {name} ...")
        if (lit := _INT.fullmatch(value)) is not None:
            literals[name] = lit.group(1)
    cdef = "\n".join(ln for ln in lines if ln)

    # cffi cannot evaluate a macro in an array size: use the header's own literal there
    # (the compiler then checks the struct layout against the real header).
    def size(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in literals:
            raise SystemExit(f"{header}: array size {name} is not an integer literal")
        return f"[{literals[name]}]"

    return re.sub(r"\[\s*([A-Za-z_]\w*)\s*\]", size, cdef)


# PMQ_CFLAGS adds flags (the sanitizer build uses it); the warnings are never optional, but
# only development and CI make them errors (PMQ_WERROR=1, set by .ci/run and scripts/sanitize.sh):
# a user's newer compiler with a new warning must not fail `pip install`.
EXTRA = shlex.split(os.environ.get("PMQ_CFLAGS", ""))
WERROR = ["-Werror"] if os.environ.get("PMQ_WERROR", "") not in ("", "0") else []

ffi = FFI()
ffi.cdef(make_cdef())
ffi.set_source(
    "pymqueue._pmq_c",
    '#include "pmq.h"',
    sources=[
        str((HERE / s).relative_to(Path.cwd()))
        if HERE.is_relative_to(Path.cwd())
        else str(HERE / s)
        for s in SOURCES
    ],
    include_dirs=[str(HERE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", *WERROR, *EXTRA],
    extra_link_args=shlex.split(os.environ.get("PMQ_LDFLAGS", "")),
    libraries=["pthread", "rt"],
    depends=[str(HERE / "pmq.h"), str(HERE / "pmq_internal.h")],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
