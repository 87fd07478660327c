"""Code both daemons use (configuration loading, logging setup); owned by neither, so that the
root helper imports nothing from the controller."""

#: the one place the version is written: pyproject.toml reads it from here (dynamic version),
#: both daemons' Version properties and the CLI show it (importlib.metadata would cost each
#: daemon ~3 MB of memory for the same string)
VERSION = "0.1.0"

#: a refused value is quoted in error messages and log lines by at most this many characters
QUOTE_MAX = 64


def quote(value: object) -> str:
    """A refused value for an error message: repr'd, at most QUOTE_MAX characters of it (both
    daemons' errors go to callers and to the journal; a megabyte of input is not echoed)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= QUOTE_MAX:
        return repr(text)
    return f"{text[:QUOTE_MAX]!r}... ({len(text)} characters)"


def lean_imports() -> None:
    """Keep OpenSSL out of a daemon: neither speaks TLS, yet asyncio imports ``ssl`` and hashlib
    ``_hashlib`` on the way, and loading libssl and libcrypto costs each process ~4.5 MB of
    memory (BENCHMARKS.md). Marking them absent makes both fall back as designed: asyncio runs
    without TLS support, hashlib uses CPython's own blake2/sha implementations. Called by the
    entry points before anything imports asyncio; a no-op where they are loaded already."""
    import sys

    for name in ("ssl", "_ssl", "_hashlib"):
        sys.modules.setdefault(name, None)


def allow_openssl() -> None:
    """Undo lean_imports for a library that imports ``ssl`` as it loads (prometheus-client's
    exposition module): OpenSSL's memory is then spent only where metrics are asked for."""
    import sys

    for name in ("ssl", "_ssl", "_hashlib"):
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
