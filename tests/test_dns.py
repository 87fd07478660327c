"""The controller's DNS answers (controller/dns.py) against a core's state."""

import pytest
from dnslib import RCODE, DNSRecord

from wg_netmanager.controller import dns
from wg_netmanager.lab.simnets import original_example

DOMAIN = "mesh.internal"


@pytest.fixture(scope="module")
def core():
    sim = original_example()
    assert sim.run_until_true(lambda: sim.converged(), 10) is not None
    return sim.nodes["alpha"].core


def ask(core, name, qtype="A", **kw):
    q = DNSRecord.question(name, qtype)
    for k, v in kw.items():
        setattr(q.header, k, v)
    return DNSRecord.parse(dns.answer(q.pack(), DOMAIN, core.addresses_of))


def test_a_node_resolves_by_name_case_insensitively_with_a_short_ttl(core):
    r = ask(core, "Charlie.Mesh.Internal")
    assert r.header.rcode == RCODE.NOERROR and r.header.aa
    assert [(str(a.rdata), a.ttl) for a in r.rr] == [("10.1.0.3", dns.TTL)]
    assert [str(a.rdata) for a in ask(core, "alpha.mesh.internal.").rr] == ["10.1.0.1"]  # itself too


@pytest.mark.parametrize("name,qtype,rcode,answers", [
    ("nobody.mesh.internal", "A", RCODE.NXDOMAIN, 0),
    ("a.charlie.mesh.internal", "A", RCODE.NXDOMAIN, 0),
    ("charlie.example.org", "A", RCODE.REFUSED, 0),
    ("mesh.internal", "A", RCODE.NOERROR, 0),
    ("charlie.mesh.internal", "AAAA", RCODE.NOERROR, 0),  # an IPv4 overlay: no AAAA
    ("charlie.mesh.internal", "MX", RCODE.NOERROR, 0),
    ("charlie.mesh.internal", "ANY", RCODE.NOERROR, 1),
])
def test_other_names_and_types(core, name, qtype, rcode, answers):
    r = ask(core, name, qtype)
    assert r.header.rcode == rcode and len(r.rr) == answers


def test_bad_queries_get_dns_errors_never_a_crash(core):
    q = DNSRecord.question("charlie.mesh.internal")
    q.header.opcode = 2  # STATUS
    assert DNSRecord.parse(dns.answer(q.pack(), DOMAIN, core.addresses_of)).header.rcode == RCODE.NOTIMP
    garbage = q.pack()[:12] + b"\x07broken"
    r = DNSRecord.parse(dns.answer(garbage, DOMAIN, core.addresses_of))
    assert r.header.rcode == RCODE.FORMERR and r.header.id == q.header.id
    assert dns.answer(b"\x00\x01", DOMAIN, core.addresses_of) is None  # not even a header
    assert dns.answer(b"x" * 600, DOMAIN, core.addresses_of) is None
    response = DNSRecord.question("charlie.mesh.internal").reply().pack()
    assert dns.answer(response, DOMAIN, core.addresses_of) is None  # a response is not answered
    import random
    rng = random.Random(5)
    for _ in range(2000):  # fuzz: any bytes, no exception
        data = bytearray(q.pack())
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        dns.answer(bytes(data), DOMAIN, core.addresses_of)


def test_names_that_are_not_dns_labels_are_not_served_and_left_nodes_not_at_all():
    sim = original_example()
    assert sim.run_until_true(lambda: sim.converged(), 10) is not None
    core = sim.nodes["alpha"].core
    assert ask(core, "delta.mesh.internal").rr
    sim.leave("delta")
    sim.run_for(1)
    assert ask(core, "delta.mesh.internal").header.rcode == RCODE.NXDOMAIN
    assert core.addresses_of("no such") == [] and ask(core, "x_y.mesh.internal").header.rcode == RCODE.NXDOMAIN


def test_a_name_that_is_no_dns_label_is_not_served_even_if_a_node_has_it():
    def lookup(label):
        return ["10.1.0.9"] if label in ("my laptop", "bad_name", "ok-name") else []
    for name, rcode in (("my laptop", RCODE.NXDOMAIN), ("bad_name", RCODE.NXDOMAIN), ("ok-name", RCODE.NOERROR)):
        q = DNSRecord.question(f"{name}.{DOMAIN}", "A")
        assert DNSRecord.parse(dns.answer(q.pack(), DOMAIN, lookup)).header.rcode == rcode, name
