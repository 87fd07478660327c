#!/usr/bin/env python3
"""Feeds random and mutated admin datagrams to the decoders; anything but ProtocolError is a crash.

Inputs, in rounds until --inputs is reached:
* random bytes of random length (mostly refused at the header or by the AEAD);
* valid datagrams of every type with one to four bytes mutated (refused by the AEAD);
* valid envelopes (sealed with the right key, correctly signed or MACed) around random or mutated
  bodies: these reach the per-type body parsers;
* random and mutated node-record payloads straight into the record decoder.
Final stdout line: {"inputs": N, "crashes": N, ...per-kind counts}
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback

from wg_netmanager.controller import crypto, wire
from wg_netmanager.controller.wire import Endpoint, Identity, LinkClaim, NodeInfo, ProtocolError

KEY = crypto.derive_admin_key(bytes(range(32)))


def valid_bodies(rng: random.Random, ident: Identity) -> list[tuple[int, bytes]]:
    info = NodeInfo(rng.randbytes(32), "10.1.1.7", 51820, 55555, "node-x", 1,
                    (Endpoint(wire.EP_LAN, "192.168.1.7", 51820, 24), Endpoint(wire.EP_REFLEXIVE, "2001:db8::7", 9)),
                    tuple(LinkClaim(rng.randbytes(8), rng.randrange(65536), 1) for _ in range(5)))
    rec = wire.make_record(ident, 5, wire.RECORD_NODE, wire.encode_node_info(info))
    return [
        (wire.PROBE, wire.body_probe(7)),
        (wire.PROBE_ACK, wire.body_probe_ack(7, ("203.0.113.5", 4000), ("2001:db8::1", 51820))),
        (wire.RECORDS, wire.body_records([rec.raw, rec.raw], wire.RECORDS_FLOOD)),
        (wire.SYNC, wire.body_sync(10, rng.randbytes(16))),
        (wire.DIGEST, wire.body_digest([(rng.randbytes(8), 3)] * 4)),
        (wire.DIGEST, wire.body_digest_buckets([rng.randbytes(16) for _ in range(16)], 1, 0x3 << 60)),
        (wire.REQUEST, wire.body_request([rng.randbytes(8)] * 3)),
        (wire.CONNECT, wire.body_connect(3, ("192.168.1.2", 51820), None)),
        (wire.CONNECT_ACK, wire.body_connect_ack(3)),
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.6 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.8 and b:
            del b[rng.randrange(len(b)):][: rng.randint(1, 16)]
        else:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ident = Identity(bytes([3]) * 32)
    bodies = valid_bodies(rng, ident)
    # signed datagrams, and ones authenticated by the pair MAC (decoded by the other end of the pair)
    peer = Identity(bytes([4]) * 32)
    pairs = crypto.PairKeys(peer, KEY)
    pair = (peer.public, crypto.PairKeys(ident, KEY).key(peer.public))
    sealed = [wire.seal(KEY, rng.randbytes(24), ident, t, 1, 1, b, mac) for t, b in bodies for mac in (None, pair)]
    payload = wire.encode_node_info(NodeInfo(bytes(32), "10.1.1.1", 1, 2, "n", 0, (), (LinkClaim(b"a" * 8, 3),)))
    counts = {"random": 0, "mutated_datagram": 0, "sealed_random_body": 0, "sealed_mutated_body": 0,
              "node_payload": 0}
    refused: dict[str, int] = {}
    crashes = 0
    examples: list[str] = []
    started = time.perf_counter()

    def feed(kind: str, fn) -> None:
        nonlocal crashes
        counts[kind] += 1
        try:
            fn()
        except ProtocolError as e:
            refused[e.reason] = refused.get(e.reason, 0) + 1
        except Exception:  # noqa: BLE001 - that is what we are counting
            crashes += 1
            if len(examples) < 5:
                examples.append(traceback.format_exc(limit=3))

    total = 0
    while total < args.inputs:
        for _ in range(400):
            data = rng.randbytes(rng.choice((0, 3, 10, 60, 150, 400, 1500)))
            if rng.random() < 0.3:
                data = wire.HEADER + data
            mutated = mutate(rng, rng.choice(sealed))
            bad_payload = mutate(rng, payload)
            random_payload = rng.randbytes(rng.randrange(120))
            feed("random", lambda d=data: wire.decode(KEY, d, pairs))
            feed("mutated_datagram", lambda d=mutated: wire.decode(KEY, d, pairs))
            feed("node_payload", lambda p=bad_payload: wire.decode_node_info(p))
            feed("node_payload", lambda p=random_payload: wire.decode_node_info(p))
        total = sum(counts.values())
        # bodies inside valid envelopes: sealing and signing is the slow part, so fewer of these
        for _ in range(40):
            mtype, body = rng.choice(bodies)
            for kind, b in (("sealed_random_body", rng.randbytes(rng.randrange(80))),
                            ("sealed_mutated_body", mutate(rng, body))):
                data = wire.seal(KEY, rng.randbytes(24), ident, mtype, 1, 1, b, rng.choice((None, pair)))
                feed(kind, lambda d=data: wire.decode(KEY, d, pairs))
                feed(kind, lambda t=mtype, bb=b: wire.BODY_PARSERS[t](bb))
        total = sum(counts.values())
    for example in examples:
        print(example, file=sys.stderr)
    print(json.dumps({"inputs": total, "crashes": crashes, "wall_s": round(time.perf_counter() - started, 1),
                      "by_kind": counts, "refused_top": dict(sorted(refused.items(), key=lambda kv: -kv[1])[:8])}))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
