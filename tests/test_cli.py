"""The CLI's offline commands (no daemons needed)."""

import stat

from click.testing import CliRunner

from wg_netmanager.common.config import load_network_config
from wg_netmanager.controller.cli import main


def test_init_writes_a_private_valid_config_and_never_overwrites(tmp_path):
    out = tmp_path / "net.yaml"
    runner = CliRunner()
    r = runner.invoke(main, ["init", "-o", str(out), "--subnet", "10.9.0.0/16", "--endpoint", "vps.example:50000"])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    cfg = load_network_config(out)
    assert str(cfg.subnet) == "10.9.0.0/16" and cfg.peers[0].endpoint_host == "vps.example"
    before = out.read_text()
    r = runner.invoke(main, ["init", "-o", str(out)])
    assert r.exit_code == 1 and out.read_text() == before
    r = runner.invoke(main, ["check", "-c", str(out)])
    assert r.exit_code == 0 and "ok" in r.output


def test_run_form_reports_a_bad_config_with_file_and_line(tmp_path):
    bad = tmp_path / "net.yaml"
    bad.write_text("network:\n  sharedKey: nope\n")
    r = CliRunner().invoke(main, ["-c", str(bad), "-a", "10.1.1.1"])
    assert r.exit_code == 2 and f"{bad}:2: sharedKey" in r.output
