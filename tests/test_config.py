import pytest

from wg_netmanager.common.config import ConfigError, load_network_config, parse_endpoint

EXAMPLE = """network:
  sharedKey: YDUBM6FhERePZ4gPlxzAbCN7K61BPjy7HApWYL+P128=
  subnet: 10.1.1.0/24
peers:
  - endPoint: 192.168.1.70:50000
    adminPort: 55555
    wgIp: 10.1.1.1
"""


def write(tmp_path, text, name="net.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_original_example_loads(tmp_path):
    cfg = load_network_config(write(tmp_path, EXAMPLE))
    assert str(cfg.subnet) == "10.1.1.0/24"
    assert len(cfg.shared_key) == 32
    (peer,) = cfg.peers
    assert (peer.endpoint_host, peer.endpoint_port, peer.admin_port, str(peer.wg_ip)) == \
        ("192.168.1.70", 50000, 55555, "10.1.1.1")
    assert cfg.warnings == ()


def test_original_host_bits_subnet_is_normalized_with_warning(tmp_path):
    cfg = load_network_config(write(tmp_path, EXAMPLE.replace("10.1.1.0/24", "10.1.1.0/8")))
    assert str(cfg.subnet) == "10.0.0.0/8"
    assert any("host bits" in w for w in cfg.warnings)


def test_hostname_endpoint_is_kept_for_resolution(tmp_path):
    cfg = load_network_config(write(tmp_path, EXAMPLE.replace("192.168.1.70", "vps.example.net")))
    assert cfg.peers[0].endpoint_host == "vps.example.net"


@pytest.mark.parametrize("old,new,line,words", [
    ("YDUBM6FhERePZ4gPlxzAbCN7K61BPjy7HApWYL+P128=", "tooshort", 2, "sharedKey"),
    ("10.1.1.0/24", "10.1.1.0/33", 3, "subnet"),
    ("192.168.1.70:50000", "192.168.1.70", 5, "endPoint"),
    ("adminPort: 55555", "adminPort: 70000", 6, "adminPort"),
    ("wgIp: 10.1.1.1", "wgIp: 10.9.9.9", 7, "not a host address"),
    ("  subnet: 10.1.1.0/24\n", "  subnet: [unclosed\n", 4, "YAML syntax"),
])
def test_errors_name_file_and_line(tmp_path, old, new, line, words):
    path = write(tmp_path, EXAMPLE.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_network_config(path)
    assert e.value.line == line, str(e.value)
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert words in str(e.value)


def test_missing_peers_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="at least one static peer"):
        load_network_config(write(tmp_path, EXAMPLE.split("peers:")[0] + "peers: []\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_network_config(tmp_path / "absent.yaml")


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key 'subnet'"):
        load_network_config(write(tmp_path, EXAMPLE.replace("  subnet: 10.1.1.0/24\n",
                                                             "  subnet: 10.1.1.0/24\n  subnet: 10.2.0.0/16\n")))


def test_parse_endpoint_forms():
    assert parse_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)
    assert parse_endpoint("host.example:1") == ("host.example", 1)
    for bad in ("2001:db8::1:5", "host:0", ":5", "host"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


@pytest.mark.parametrize("endpoint,words", [
    ("127.0.0.1:50000", "loopback"),
    ("255.255.255.255:50000", "broadcast"),
    ("192.168.1.70:\u0665\u0660", "not in 1..65535"),
])
def test_an_endpoint_the_helper_would_refuse_is_a_config_error(tmp_path, endpoint, words):
    """check and the daemons refuse what the helper would: the same rule (common/endpoints.py),
    with the file and line."""
    path = write(tmp_path, EXAMPLE.replace("192.168.1.70:50000", endpoint))
    with pytest.raises(ConfigError, match=words) as e:
        load_network_config(path)
    assert f"{path}:5:" in str(e.value)


def test_an_endpoint_inside_the_subnet_is_fine_unless_an_overlay_address_is_on_it(tmp_path):
    """A 10.0.0.0/8 overlay over a 10.x LAN, as the original allows (its README: 10.1.1.0/8);
    refused only where a node's overlay address is an underlay address in use (a routing loop)."""
    wide = EXAMPLE.replace("10.1.1.0/24", "10.0.0.0/8")
    cfg = load_network_config(write(tmp_path, wide.replace("192.168.1.70", "10.128.1.2")))
    assert cfg.peers[0].endpoint_host == "10.128.1.2"
    path = write(tmp_path, wide.replace("192.168.1.70", "10.1.1.1"))
    with pytest.raises(ConfigError, match=r"wgIp 10.1.1.1 is static peer 10.1.1.1's endPoint: routing it into "
                                          r"the tunnel would loop") as e:
        load_network_config(path)
    assert f"{path}:7:" in str(e.value)


def test_own_overlay_address_on_an_underlay_address_is_refused_with_where(tmp_path):
    import ipaddress

    from wg_netmanager.common.config import PeerConfig, merge_problems

    cfg = load_network_config(write(tmp_path, EXAMPLE.replace("10.1.1.0/24", "10.0.0.0/8").replace(
        "192.168.1.70", "10.128.1.2")))
    assert merge_problems(cfg, None, None, "10.128.1.9") == []
    (problem,) = merge_problems(cfg, None, None, "10.128.1.2")
    assert "address 10.128.1.2 is static peer 10.1.1.1's endPoint" in str(problem) and "-a" in str(problem)
    local = {ipaddress.ip_address("10.128.1.9"): "this box's address on eth0"}
    (problem,) = merge_problems(cfg, PeerConfig(""), None, "10.128.1.9", local)
    assert "10.128.1.9 is this box's address on eth0" in str(problem)


IDENT = "ab" * 32
WGKEY = "YDUBM6FhERePZ4gPlxzAbCN7K61BPjy7HApWYL+P128="


def test_revoked_and_strict_mode_keys(tmp_path):
    text = EXAMPLE + f"""revoked:
  - name: mallory
    identity: {IDENT}
    wgKey: {WGKEY}
allowed:
  10.1.1.1: {"cd" * 32}
  10.1.1.2: [{IDENT}, {"ef" * 32}]
"""
    cfg = load_network_config(write(tmp_path, text))
    assert cfg.revoked_identities == {bytes.fromhex(IDENT)}
    assert len(next(iter(cfg.revoked_wg_keys))) == 32
    assert cfg.allowed == {"10.1.1.1": {bytes.fromhex("cd" * 32)},
                           "10.1.1.2": {bytes.fromhex(IDENT), bytes.fromhex("ef" * 32)}}
    assert load_network_config(write(tmp_path, EXAMPLE, "plain.yaml")).allowed is None


@pytest.mark.parametrize("extra,line,words", [
    ("revoked:\n  - identity: abc\n", 9, "identity must be a node identity: 64 hex digits"),
    (f"revoked:\n  - identity: {IDENT}\n    wgkey: x\n", 10,
     "unknown key revoked[].'wgkey' - fix: did you mean 'wgKey'?"),
    (f"revoked:\n  - identity: {IDENT}\n    wgKey: nope\n", 10, "wgKey must be a WireGuard public key"),
    (f"allowed:\n  10.9.9.9: {IDENT}\n", 9, "allowed: 10.9.9.9 is not a host address in 10.1.1.0/24"),
    ("allowed:\n  10.1.1.5: zz\n", 9, "allowed: 10.1.1.5: identity must be a node identity"),
    ("revoked: yes\n", 8, "'revoked' must be a list of nodes"),
])
def test_revoked_and_allowed_errors_name_the_line(tmp_path, extra, line, words):
    path = write(tmp_path, EXAMPLE + extra)
    with pytest.raises(ConfigError) as e:
        load_network_config(path)
    assert f"{path}:{line}: {words}" in str(e.value), str(e.value)
