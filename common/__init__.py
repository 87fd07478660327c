"""Code both daemons use (configuration loading, logging setup); owned by neither, so that the
root helper imports nothing from the controller."""

#: the one place the version is written: pyproject.toml reads it from here (dynamic version),
#: both daemons' Version properties and the CLI show it (importlib.metadata would cost each
#: daemon ~3 MB of memory for the same string)
VERSION = "0.1.0"
