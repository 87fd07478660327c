"""The man page and the shell completions of ``wg_netmanager``, generated from its click commands.

``python3 -m wg_netmanager.controller.docgen DIR`` writes ``DIR/wg_netmanager.1``,
``DIR/completion/bash/wg_netmanager`` and ``DIR/completion/zsh/_wg_netmanager``; the Debian
package installs them (the helper's page, ``docs/wg-netmanager-helper.8``, is written by hand).
The files are committed under ``docs/``; a fast test regenerates them and compares, so they
cannot drift from the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.shell_completion import get_completion_class

from wg_netmanager.common import VERSION

PROG = "wg_netmanager"


def _roff(text: str) -> str:
    lines = []
    for line in (text or "").strip().splitlines():
        line = line.strip().replace("\\", "\\\\").replace("-", "\\-")
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _metavar(param: click.Option) -> str:
    """(Not click's make_metavar: its signature differs between click 8.1, Debian's, and 8.2.)"""
    if param.metavar:
        return param.metavar
    if isinstance(param.type, click.Choice):
        return "|".join(param.type.choices)
    return {"integer range": "N", "integer": "N", "float range": "N", "float": "N"}.get(param.type.name,
                                                                                      param.type.name.upper())


def _option(param: click.Parameter) -> str:
    if not isinstance(param, click.Option) or param.hidden:
        return ""
    names = ", ".join(f"\\fB{_roff(n)}\\fR" for n in param.opts + param.secondary_opts)
    metavar = "" if param.is_flag else f" \\fI{_roff(_metavar(param))}\\fR"
    text = param.help or ""
    if param.show_default and param.default not in (None, "", False) and not callable(param.default):
        text += f" (default: {param.default})"
    return f".TP\n{names}{metavar}\n{_roff(text)}\n"


def man_page(group: click.Group) -> str:
    """A section-1 man page: the run form's options, then every command with its own."""
    out = [f'.TH WG_NETMANAGER 1 "" "wg-netmanager {VERSION}" "User Commands"',
           ".SH NAME", f"{PROG} \\- WireGuard mesh manager: the controller and its command line",
           ".SH SYNOPSIS", f".B {PROG}", "[\\fIOPTIONS\\fR]", ".br", f".B {PROG}", "\\fICOMMAND\\fR [\\fIARGS\\fR]...",
           ".SH DESCRIPTION", _roff(group.help or ""),
           "Every node runs the controller (unprivileged) and the helper, wg\\-netmanager\\-helper(8) (root);",
           "the commands below talk to the running controller over the system bus.",
           ".SH OPTIONS"]
    out += [_option(p) for p in group.params if _option(p)]
    out.append(".SH COMMANDS")
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden:
            continue
        args = " ".join(f"\\fI{_roff(p.human_readable_name.upper())}\\fR" for p in command.params
                        if isinstance(p, click.Argument))
        out += [f".SS {name} {args}".rstrip(), _roff(command.help or "")]
        out += [_option(p) for p in command.params if _option(p)]
    out += [".SH FILES", "/etc/wg\\-netmanager/net.yaml, /etc/wg\\-netmanager/peer.yaml",
            ".SH SEE ALSO", "wg\\-netmanager\\-helper(8), wg(8), busctl(1)", ""]
    return "\n".join(line.rstrip("\n") for line in out)


def completion(group: click.Group, shell: str) -> str:
    cls = get_completion_class(shell)
    return cls(group, {}, PROG, "_WG_NETMANAGER_COMPLETE").source()


def generated(group: click.Group) -> dict[str, str]:
    """Relative path -> text (the names the shells look for)."""
    from wg_netmanager.controller.schemas import SCHEMAS

    return {"wg_netmanager.1": man_page(group), "completion/bash/wg_netmanager": completion(group, "bash"),
            "completion/zsh/_wg_netmanager": completion(group, "zsh"),
            "json-schemas.json": json.dumps({"$comment": "the shapes of wg_netmanager COMMAND --json "
                                             "(controller/schemas.py)", "commands": SCHEMAS}, indent=1) + "\n"}


def main() -> int:
    from wg_netmanager.controller.cli import main as cli

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in generated(cli).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
