"""The CLI's offline commands (no daemons needed)."""

import grp
import os
import pwd
import stat

import pytest
from click.testing import CliRunner

from wg_netmanager.common import VERSION
from wg_netmanager.common.config import EXIT_CONFIG, SERVICE_GROUP, load_network_config
from wg_netmanager.controller.cli import main


def _exists(lookup, name):
    try:
        lookup(name)
    except KeyError:
        return False
    return True


SERVICE_USER_HERE = os.geteuid() == 0 and _exists(grp.getgrnam, SERVICE_GROUP) and _exists(pwd.getpwnam, SERVICE_GROUP)

NET = """network:
  sharedKey: YDUBM6FhERePZ4gPlxzAbCN7K61BPjy7HApWYL+P128=
  subnet: 10.1.1.0/24
peers:
  - endPoint: 198.51.100.7:50000
    adminPort: 55555
    wgIp: 10.1.1.1
"""
PEER = "name: alice\nwgIp: 10.1.1.5\n"


def _write(path, text, mode=0o640, owner=0, group=SERVICE_GROUP):
    path.write_text(text)
    os.chown(path, owner, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)
    return path


# (what to change, the lines check must print: every problem at once, each with file:line and fix)
CHECK_CASES = {
    "unreadable by the service": (dict(net_mode=0o600, net_group="root"),
                                  ["{net}: the service user 'wg-netmanager' cannot read it - fix: "
                                   "chown root:wg-netmanager {net} && chmod 0640 {net}"]),
    "foreign owner": (dict(net_owner=65534), ["{net}: must be owned by root"]),
    "writable and readable by all": (dict(net_mode=0o666), [
        "{net}: must not be writable by group or others - fix: chmod go-w {net}",
        "{net}: is readable by every user, and its sharedKey lets anyone join - fix: chmod o-r {net}"]),
    "world-readable shared key": (dict(net_mode=0o644), ["{net}: is readable by every user"]),
    "peer wgIp outside the subnet": (dict(peer="name: alice\nwgIp: 10.9.9.9\n"),
                                     ["{peer}:2: address 10.9.9.9 is not a host address in the subnet 10.1.1.0/24"]),
    "wgInterface contradicts -i": (dict(peer=PEER + "wgInterface: wg7\n"),
                                   ["{peer}:3: wgInterface wg7 contradicts the command line's -i wg0"]),
    "typo'd key": (dict(net=NET.replace("adminPort", "adminport")),
                   ["{net}:6: unknown key peers[].'adminport' - fix: did you mean 'adminPort'?"]),
    "typo'd peer.yaml key": (dict(peer=PEER + "wgport: 5\n"),
                             ["{peer}:3: unknown key 'wgport' - fix: did you mean 'wgPort'?"]),
    "all at once": (dict(net=NET.replace("10.1.1.0/24", "10.1.1.0/40").replace("sharedKey", "sharedkey"),
                         net_mode=0o644), [
        "{net}: is readable by every user",
        "{net}:2: unknown key network.'sharedkey' - fix: did you mean 'sharedKey'?",
        "{net}:2: network: missing 'sharedKey'",
        "{net}:3: subnet is not a CIDR"]),
}


@pytest.mark.skipif(not SERVICE_USER_HERE, reason="needs root and the wg-netmanager user (scripts/dev.sh setup)")
@pytest.mark.parametrize("case", sorted(CHECK_CASES))
def test_check_reports_everything_the_service_would_refuse(tmp_path, case):
    change, expected = CHECK_CASES[case]
    net = _write(tmp_path / "net.yaml", change.get("net", NET), change.get("net_mode", 0o640),
                 change.get("net_owner", 0), change.get("net_group", SERVICE_GROUP))
    peer = _write(tmp_path / "peer.yaml", change.get("peer", PEER))
    r = CliRunner().invoke(main, ["check", "-c", str(net), "-p", str(peer)])
    assert r.exit_code == EXIT_CONFIG, r.output
    lines = r.output.splitlines()
    assert all(line.startswith("wg_netmanager: ") for line in lines), r.output
    for want in expected:
        want = want.format(net=net, peer=peer)
        assert any(line.startswith(f"wg_netmanager: {want}") for line in lines), (want, r.output)
    assert len(lines) == len(expected), r.output


@pytest.mark.skipif(not SERVICE_USER_HERE, reason="needs root and the wg-netmanager user (scripts/dev.sh setup)")
def test_check_accepts_what_the_service_runs_with(tmp_path):
    net = _write(tmp_path / "net.yaml", NET)
    peer = _write(tmp_path / "peer.yaml", PEER + "wgInterface: wg0\n")
    r = CliRunner().invoke(main, ["check", "-c", str(net), "-p", str(peer)])
    assert r.exit_code == 0 and f"{net}: ok" in r.output and f"{peer}: ok" in r.output, r.output


def test_init_writes_a_private_valid_config_the_service_can_read_and_never_overwrites(tmp_path):
    out = tmp_path / "net.yaml"
    runner = CliRunner()
    r = runner.invoke(main, ["init", "-o", str(out), "--subnet", "10.9.0.0/16", "--endpoint", "vps.example:50000"])
    assert r.exit_code == 0, r.output
    if SERVICE_USER_HERE:  # as root: root:wg-netmanager 0640, what both daemons need
        assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.stat().st_gid == grp.getgrnam(SERVICE_GROUP).gr_gid
    else:  # otherwise it says what to run
        assert stat.S_IMODE(out.stat().st_mode) == 0o600 and "chown root:wg-netmanager" in r.output
    cfg = load_network_config(out)
    assert str(cfg.subnet) == "10.9.0.0/16" and cfg.peers[0].endpoint_host == "vps.example"
    before = out.read_text()
    r = runner.invoke(main, ["init", "-o", str(out)])
    assert r.exit_code == 1 and out.read_text() == before
    r = runner.invoke(main, ["check", "-c", str(out)] + ([] if SERVICE_USER_HERE else ["--no-files"]))
    assert r.exit_code == 0 and "ok" in r.output


def test_run_form_reports_a_bad_config_with_file_and_line(tmp_path):
    bad = tmp_path / "net.yaml"
    bad.write_text("network:\n  sharedKey: nope\n")
    r = CliRunner().invoke(main, ["-c", str(bad), "-a", "10.1.1.1"])
    assert r.exit_code == EXIT_CONFIG and f"{bad}:2: sharedKey" in r.output


def test_version_and_friendly_errors_without_a_controller():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"wg_netmanager, version {VERSION}"
    from wg_netmanager.helper.service import main as helper_main
    with pytest.raises(SystemExit) as e:
        helper_main(["--version"])
    assert e.value.code == 0


def test_the_man_pages_and_completions_are_those_of_the_commands():
    """docs/ holds what controller/docgen.py makes of the click commands (the Debian package
    installs it): regenerated here, it must be identical; the helper's hand-written page names
    every option its parser has."""
    from pathlib import Path

    from wg_netmanager.controller import docgen
    from wg_netmanager.controller.cli import main as cli
    from wg_netmanager.helper.service import build_parser

    docs = Path(__file__).resolve().parent.parent / "docs"
    for name, text in docgen.generated(cli).items():
        assert (docs / name).read_text() == text, f"docs/{name} is stale (see controller/docgen.py)"
    page = (docs / "wg-netmanager-helper.8").read_text().replace("\\-", "-")
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"\\fB{option}\\fR" in page, option
    man = (docs / "wg_netmanager.1").read_text()
    for command in ("why", "status", "down", "revoke"):
        assert f".SS {command}" in man
