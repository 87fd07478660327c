"""``wg_netmanager``: run the controller, or inspect a running one.

    wg_netmanager -c net.yaml -i wg0 -a 10.1.1.1 -n alice     run the controller (foreground)
    wg_netmanager init | check | status | nodes | routes | ping NODE | why NODE | watch | down | up | revoke NODE | demo

User errors are one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import pwd
import sys
import time
from pathlib import Path

import click

from wg_netmanager.common import VERSION, logsetup
from wg_netmanager.common.config import (
    EXIT_CONFIG,
    SERVICE_GROUP,
    ConfigError,
    ConfigProblems,
    load_network_config,
    load_peer_config,
    merge_problems,
    service_read_problem,
    trust_problems,
)

from .render import path_text

EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3


def fail(message: str, code: int = 1) -> None:
    """One line per problem on stderr (at error priority under systemd), and an exit status."""
    logsetup.fatal("wg_netmanager", message)
    sys.exit(code)


# ------------------------------------------------------------------------------ run form


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "-V", "--version", prog_name="wg_netmanager")
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default="/etc/wg-netmanager/net.yaml",
              show_default=True, help="net.yaml (shared by every node)")
@click.option("-p", "--peer", "peer", type=click.Path(dir_okay=False), help="peer.yaml (this node's settings)")
@click.option("-i", "--interface", help="WireGuard interface [wg0]")
@click.option("-a", "--address", help="this node's overlay IP (wgIp)")
@click.option("-n", "--name", help="this node's name [hostname]")
@click.option("-e", "--existing", is_flag=True, help="use an existing WireGuard interface")
@click.option("-w", "--wg-port", type=click.IntRange(1, 65535), help="WireGuard listen port [50000]")
@click.option("-u", "--admin-port", type=click.IntRange(1, 65535), help="admin UDP port [55555]")
@click.option("-H", "--port-hopping", is_flag=True, help="change the WireGuard port when nothing is reachable")
@click.option("-t", "--live", is_flag=True, help="live view of the mesh while running")
@click.option("-l", "--link-policy", type=click.Choice(["auto", "all", "static"]), default="auto",
              show_default=True, help="which pairs keep direct links (see README)")
@click.option("--idle-timeout", type=click.FloatRange(5, 86400), default=120, show_default=True, metavar="SECONDS",
              help="-l auto: a direct link without traffic for this long (up to 1.5 times: links falling idle"
                   " go together) goes silent (no keepalives/probes)")
@click.option("--state-dir", type=str,
              default=lambda: os.environ.get("STATE_DIRECTORY", "/var/lib/wg-netmanager"),
              show_default="$STATE_DIRECTORY or /var/lib/wg-netmanager")
@click.option("--drop-privileges", metavar="USER", help="when started as root: switch to USER before running")
@click.option("--dns-port", type=click.IntRange(0, 65535), default=53535, show_default=True,
              help="answer <name>.<domain> on this UDP port of the overlay address (0: no names)")
@click.option("--metrics", "metrics_at", metavar="HOST:PORT",
              help="serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9586)")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def main(ctx, config, peer, interface, address, name, existing, wg_port, admin_port, port_hopping, live,
         link_policy, idle_timeout, state_dir, drop_privileges, dns_port, metrics_at, verbose):
    """WireGuard mesh manager. Without a command: run the controller in the foreground."""
    if ctx.invoked_subcommand is not None:
        return
    from .runtime import Controller, settings_from

    logsetup.setup(verbose)

    def load_settings():
        """net.yaml, peer.yaml and this command line (again on SIGHUP: systemctl reload)."""
        network = load_network_config(config)
        peer_cfg = load_peer_config(peer) if peer else None
        for warning in network.warnings:
            click.echo(f"wg_netmanager: warning: {warning}", err=True)
        return settings_from(network, peer_cfg, interface=interface, address=address, name=name,
                             existing=existing, wg_port=wg_port, admin_port=admin_port,
                             port_hopping=port_hopping, state_dir=Path(state_dir), link_policy=link_policy,
                             idle_timeout=idle_timeout)
    try:
        settings = load_settings()
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    if os.geteuid() == 0:
        if not drop_privileges:
            fail("refusing to run the controller as root: it needs no privilege (the helper applies changes). "
                 "Run it as the 'wg-netmanager' user, or pass --drop-privileges wg-netmanager", EXIT_CONFIG)
        _drop_privileges(drop_privileges, Path(state_dir))
    controller = Controller(settings, reload_settings=load_settings)
    controller.dns_port = dns_port
    if metrics_at:
        controller.metrics_address = _metrics_address(metrics_at)
    if live:
        controller.listeners.append(lambda event: click.echo(f"{time.strftime('%H:%M:%S')} {event}"))
    try:
        sys.exit(asyncio.run(_run(controller)))
    except ConfigError as e:
        fail(str(e), EXIT_UNAVAILABLE)
    except PermissionError as e:
        fail(f"{e.strerror}: {e.filename or ''} (state directory and net.yaml must be readable by this user)",
             EXIT_CONFIG)
    except OSError as e:
        fail(f"cannot start: {e}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        sys.exit(130)


def _metrics_address(text: str) -> tuple[str, int]:
    """--metrics HOST:PORT, on a loopback address only (the metrics name every node)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        if not ipaddress.ip_address(host).is_loopback or not 1 <= int(port) <= 65535:
            raise ValueError
        from wg_netmanager.common import allow_openssl

        allow_openssl()  # (prometheus-client imports ssl)
        import prometheus_client  # noqa: F401 - needed to serve them
    except ValueError:
        fail(f"--metrics {text!r}: give a loopback address and port, e.g. 127.0.0.1:9586", EXIT_CONFIG)
    except ImportError:
        fail("--metrics needs prometheus-client (Debian: apt install python3-prometheus-client)", EXIT_CONFIG)
    return host, int(port)


async def _run(controller) -> int:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(controller.reload()))
    from .helper_client import HelperError

    try:
        return await controller.run()
    except HelperError as e:
        fail(f"the helper refused: {e}", EXIT_UNAVAILABLE)
    return 1


def _drop_privileges(user: str, state_dir: Path) -> None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        fail(f"no such user: {user}", EXIT_CONFIG)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(state_dir, pw.pw_uid, pw.pw_gid)
    os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


# ------------------------------------------------------------------------------ config commands


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="net.yaml", show_default=True)
@click.option("--subnet", default="10.1.1.0/24", show_default=True)
@click.option("--endpoint", default="vps.example.net:50000", show_default=True,
              help="the first static peer's public host:port")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(output, subnet, endpoint, force):
    """Write a new net.yaml with a fresh shared key (root:wg-netmanager 0640 as root, else 0600)."""
    path = Path(output)
    if path.exists() and not force:
        fail(f"{path} exists; not overwriting it (use --force)")
    key = base64.b64encode(os.urandom(32)).decode()
    try:
        first_host = next(ipaddress.ip_network(subnet, strict=False).hosts())
    except (ValueError, StopIteration):
        fail(f"--subnet {subnet!r} is not a usable CIDR", EXIT_CONFIG)
    text = f"""# wg_netmanager network configuration: copy this file to every node (keep it secret).
network:
  sharedKey: {key}   # like `wg genkey`; whoever has it can join
  subnet: {subnet}
peers:                  # static peers: at least one, reachable by the others
  - endPoint: {endpoint}   # host:port of its WireGuard; the host may be a DNS name
    adminPort: 55555
    wgIp: {first_host}
"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    mode = _give_to_service(path)
    try:
        load_network_config(path)
    except ConfigError as e:
        path.unlink()
        fail(str(e), EXIT_CONFIG)
    click.echo(f"wrote {path} (mode {mode}); edit the static peer, then copy it to every node")
    if mode == "0600":
        click.echo(f"the service reads it as group {SERVICE_GROUP}: as root, run "
                   f"chown root:{SERVICE_GROUP} {path} && chmod 0640 {path}")


def _give_to_service(path: Path) -> str:
    """As root, with the service's group present: root:wg-netmanager 0640 (what the helper and
    the controller need); otherwise the file stays 0600 and init says what to run."""
    os.chmod(path, 0o600)
    if os.geteuid() != 0:
        return "0600"
    try:
        import grp

        gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return "0600"
    os.chown(path, 0, gid)
    os.chmod(path, 0o640)
    return f"0640 root:{SERVICE_GROUP}"


@main.command()
@click.option("-c", "--config", "config", type=click.Path(dir_okay=False), default="/etc/wg-netmanager/net.yaml",
              show_default=True)
@click.option("-p", "--peer", "peer", type=click.Path(dir_okay=False))
@click.option("-i", "--interface", default="wg0", show_default=True,
              help="the -i the service runs with (the unit passes -i wg0)")
@click.option("--no-files", is_flag=True, help="check the contents only, not owner and modes (a draft)")
def check(config, peer, interface, no_files):
    """Validate net.yaml and peer.yaml as the service will: every problem at once, each with
    file, line and the fix (owner and modes as the helper requires them, peer.yaml against
    net.yaml, unknown keys)."""
    problems: list[ConfigError] = []
    net = peer_cfg = None
    for path, load in ((config, load_network_config), (peer, load_peer_config)):
        if path is None:
            continue
        if not no_files:
            if path == config:
                problems += trust_problems(path)
            unreadable = service_read_problem(path)
            if unreadable is not None:
                problems.append(unreadable)
        try:
            loaded = load(path)
        except ConfigProblems as e:
            problems += e.problems
            continue
        except ConfigError as e:
            problems.append(e)
            continue
        if path == config:
            net = loaded
        else:
            peer_cfg = loaded
    if net is not None and peer_cfg is not None:
        from .runtime import box_underlay

        problems += merge_problems(net, peer_cfg, interface, None,
                                   box_underlay(interface or peer_cfg.interface or "wg0"))
    if problems:
        seen = []
        for p in problems:
            if str(p) not in seen:
                seen.append(str(p))
        fail("\n".join(seen), EXIT_CONFIG)
    for warning in net.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config}: ok (subnet {net.subnet}, {len(net.peers)} static peer(s))")
    if peer_cfg:
        click.echo(f"{peer}: ok")


# ------------------------------------------------------------------------------ talking to Controller1


@main.command()
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (Controller1.Explain's object)")
def why(node, as_json):
    """Why the path to NODE is what it is: its direct link's state, failures, next attempt and
    last transitions, from the controller's state (not from logs)."""
    from wg_netmanager.dbus import ControllerErrors

    answer = asyncio.run(_controller_call("Explain", "s", [node], tolerate=(ControllerErrors.UNKNOWN_NODE,)))
    if answer is None:
        fail(f"no node named {node!r} (wg_netmanager status lists them)")
    report = json.loads(answer[0])
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"{report['name']} ({report['overlay_ip']}): {report['reason']}")
    link = report["link"]
    if report["endpoints"]:
        click.echo(f"  offers:      {', '.join(report['endpoints'])}")
    if link is None:
        return
    role = "static peer link" if link["static"] else ("we start attempts" if link["initiator"] else
                                                    "the other end starts attempts")
    click.echo(f"  direct link: {link['state']} via {link['endpoint'] or '-'} ({link['endpoint_kind'] or '-'}; {role})")
    if link["failures"]:
        click.echo(f"  failures:    {link['failures']} (last: {link['last_failure']})")
    if link["next_attempt_in_s"] is not None:
        click.echo(f"  next try:    in {link['next_attempt_in_s']:.0f} s")
    if link["rtt_ms"] is not None:
        click.echo(f"  rtt:         {link['rtt_ms']} ms measured, {link['claimed_rtt_ms']} ms claimed")
    for h in link["history"]:
        click.echo(f"  {h['ago_s']:>8.1f} s ago  {h['what']}" + (f": {h['detail']}" if h["detail"] else ""))


async def _controller_call(member: str, signature: str = "", body: list | None = None, timeout: float = 10,
                           tolerate: tuple[str, ...] = ()):
    """Call Controller1; any failure is one line and an exit status, except the named errors in
    ``tolerate`` (then None)."""
    from wg_netmanager.dbus import CONTROLLER_INTERFACE

    return await _controller_call_to(CONTROLLER_INTERFACE, member, signature, body, timeout, tolerate)


async def _controller_call_to(interface: str, member: str, signature: str = "", body: list | None = None,
                              timeout: float = 10, tolerate: tuple[str, ...] = ()):
    from wg_netmanager.dbus import CONTROLLER_BUS_NAME, CONTROLLER_OBJECT_PATH
    from wg_netmanager.dbus.compat import BusType, Message, MessageBus, MessageType

    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, Exception) as e:  # noqa: BLE001 - any failure to reach the bus is one message
        fail(f"cannot reach the system bus: {e}", EXIT_UNAVAILABLE)
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination=CONTROLLER_BUS_NAME, path=CONTROLLER_OBJECT_PATH, interface=interface,
            member=member, signature=signature, body=body or [])), timeout)
    except TimeoutError:
        fail("the controller did not answer", EXIT_UNAVAILABLE)
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        name = reply.error_name or ""
        if name in tolerate:
            return None
        text = reply.body[0] if reply.body else name
        if name.endswith("ServiceUnknown") or name.endswith("NameHasNoOwner"):
            fail("the controller is not running (no org.wgnetmanager.Controller1 on the system bus)",
                 EXIT_UNAVAILABLE)
        if name.endswith("AccessDenied") or name.endswith("NotAuthorized"):
            fail(f"not allowed: {text.split(',')[0]} (run it as root, or join group 'wg-netmanager' to read)", 4)
        fail(_error_text(name, text), EXIT_FAILED)
    return reply.body


def _error_text(name: str, text: str) -> str:
    """One friendly line for an error reply (our named errors carry their own sentence)."""
    from wg_netmanager.dbus import ControllerErrors

    if name == ControllerErrors.INTERNAL:
        return f"the controller failed: {text}"
    if name.startswith(ControllerErrors.PREFIX):
        return text
    return f"{text} ({name.rsplit('.', 1)[-1]})"


def _unvariant(d: dict) -> dict:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}


def _self() -> dict:
    """This node, from Controller1's properties."""
    from wg_netmanager.dbus import CONTROLLER_INTERFACE

    (props,) = asyncio.run(_controller_call_to("org.freedesktop.DBus.Properties", "GetAll", "s",
                                              [CONTROLLER_INTERFACE]))
    p = _unvariant(props)
    return {"name": p.get("Name", ""), "overlay_ip": p.get("OverlayAddress", ""), "identity": p.get("Identity", ""),
            "public_key": p.get("PublicKey", ""), "interface": p.get("Interface", ""), "state": p.get("State", "up"),
            "version": p.get("Version", ""), "domain": p.get("Domain", ""), "names": p.get("Names", ""),
            "public_endpoint": p.get("PublicEndpoint", ""), "nat": p.get("Nat", "unknown"),
            "listen_port": p.get("ListenPort", 0),
            "refused": list(p.get("Refused", []))}


def _nodes() -> list[dict]:
    (nodes,) = asyncio.run(_controller_call("ListNodes"))
    return [_unvariant(n) for n in nodes]


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    secs = max(0, int(time.time() - ts))
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json):
    """This node and every other node: path, latency, handshake, traffic."""
    me = _self()
    nodes = _nodes()
    (routes,) = asyncio.run(_controller_call("ListRoutes"))
    if as_json:
        click.echo(json.dumps({"self": me, "nodes": nodes, "routes": [{"destination": d, "gateway": g, "via": v}
                                                                      for d, g, v in routes]}, indent=1))
        return
    rows = [[me["overlay_ip"], me["name"], f"(this node; NAT: {me['nat']}; port {me['listen_port']})"
             if me["state"] == "up" else "(this node: down)", "-", me["public_endpoint"] or "-", "-", "-"]]
    for n in nodes:
        rtt = f"{n['rtt_ms']:.0f} ms" if n["rtt_ms"] >= 0 and n["reachable"] else "-"
        rows.append([n["overlay_ip"], n["name"], path_text(n), rtt, n["endpoint"] or "-", _ago(n["last_handshake"]),
                     f"{_bytes(n['rx_bytes'])} / {_bytes(n['tx_bytes'])}"])
    click.echo(_table(rows, ["ADDRESS", "NODE", "PATH", "RTT", "ENDPOINT", "HANDSHAKE", "RX / TX"]))
    for line in me["refused"]:
        click.echo(f"refused: {line}")
    if me["names"] == "resolved":
        click.echo(f"\nnames: <node>.{me['domain']} (e.g. {me['name']}.{me['domain']}) through systemd-resolved")
    else:
        click.echo(f"\nnames: {me['names'] or 'off'} - use the addresses above")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def nodes(as_json):
    """Known nodes with identity fingerprints and WireGuard keys."""
    found = _nodes()
    if as_json:
        click.echo(json.dumps({"nodes": found}, indent=1))
        return
    rows = [[n["overlay_ip"], n["name"], n["identity"], n["public_key"], "static" if n["static"] else ""]
            for n in found]
    click.echo(_table(rows, ["ADDRESS", "NODE", "IDENTITY", "WIREGUARD KEY", ""]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def routes(as_json):
    """The /32 routes this node installs."""
    (rows,) = asyncio.run(_controller_call("ListRoutes"))
    if as_json:
        click.echo(json.dumps({"routes": [{"destination": d, "gateway": g, "via": v} for d, g, v in rows]}, indent=1))
        return
    click.echo(_table([[d, f"via {v} ({g})" if g else "direct"] for d, g, v in rows], ["DESTINATION", "PATH"]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def counters(as_json):
    """The controller's counters: datagrams by type, drops by reason, refusals."""
    (values,) = asyncio.run(_controller_call("GetCounters"))
    if as_json:
        click.echo(json.dumps({"counters": dict(sorted(values.items()))}, indent=1))
        return
    click.echo(_table([[k, str(v)] for k, v in sorted(values.items())], ["COUNTER", "VALUE"]))


@main.command()
def metrics():
    """This node's metrics in Prometheus' text format (what --metrics serves)."""
    (text,) = asyncio.run(_controller_call("GetMetrics"))
    click.echo(text, nl=False)


@main.command()
@click.argument("node")
def connect(node):
    """Pin a direct link to NODE (name or overlay IP): attempted now, never idled (root)."""
    (ok,) = asyncio.run(_controller_call("Connect", "s", [node]))
    click.echo(f"{node}: direct link attempted" if ok else f"{node}: no direct link possible now (no endpoint known)")


@main.command()
@click.argument("node")
@click.option("-c", "--count", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (one object at the end)")
def ping(node, count, as_json):
    """Probe NODE (name or overlay IP) through the mesh: path and round trip."""
    from wg_netmanager.dbus import ControllerErrors

    replies = []
    for i in range(count):
        answer = asyncio.run(_controller_call("Probe", "s", [node], tolerate=(ControllerErrors.TIMEOUT,)))
        rtt, via = answer if answer is not None else (-1.0, "timeout")
        replies.append({"rtt_ms": rtt if rtt >= 0 else None, "via": via})
        if not as_json:
            click.echo(f"{node}: no answer ({via})" if rtt < 0 else f"{node}: {rtt:.1f} ms via {via}")
        if i + 1 < count:
            time.sleep(1)
    if as_json:
        click.echo(json.dumps({"node": node, "replies": replies}, indent=1))
    if all(r["rtt_ms"] is None for r in replies):
        sys.exit(1)


@main.command()
@click.argument("node")
def revoke(node):
    """Print the net.yaml lines that expel NODE (name or overlay IP) for good.

    Add them to net.yaml on every node (root), then `systemctl reload wg-netmanager`: every
    controller drops the node and refuses its records, every helper removes its WireGuard peer
    and refuses to add it again. The node may still hold the shared key: to keep it from
    joining under a new identity, also run in strict mode (`allowed:`) or rotate the key."""
    match = [n for n in _nodes() if node in (n["name"], n["overlay_ip"])]
    if not match:
        fail(f"no node named {node!r} (wg_netmanager status lists them)")
    n = match[0]
    click.echo(f"""# expel {n['name']} ({n['overlay_ip']}): add to net.yaml on every node, then
# systemctl reload wg-netmanager
revoked:
  - name: {n['name']}
    identity: {n['identity_key']}
    wgKey: {n['public_key']}""")


@main.command()
def down():
    """Leave the mesh (root): every node drops this one at once and lists it as left; then the
    WireGuard device and routes are removed. `wg_netmanager up` comes back."""
    (changed,) = asyncio.run(_controller_call("Down", timeout=30))
    click.echo("left the mesh; the WireGuard device and routes are removed" if changed else "already down")


@main.command()
def up():
    """Come back into the mesh after `down` (root)."""
    (changed,) = asyncio.run(_controller_call("Up", timeout=30))
    click.echo("back in the mesh" if changed else "already up")


@main.command()
@click.option("--refresh", default=30.0, show_default=True, metavar="SECONDS",
              help="redraw at least this often (handshake ages) when nothing changes")
def watch(refresh):
    """Live view of the mesh, redrawn when it changes (Controller1's MeshChanged signal, no
    polling). Without a terminal: one block per change. Ctrl-C to leave."""
    try:
        asyncio.run(_watch(refresh))
    except KeyboardInterrupt:
        pass


async def _watch(refresh: float) -> None:
    from wg_netmanager.dbus import CONTROLLER_INTERFACE
    from wg_netmanager.dbus.compat import BusType, Message, MessageBus, MessageType

    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as e:  # noqa: BLE001 - any failure to reach the bus is one message
        fail(f"cannot reach the system bus: {e}", EXIT_UNAVAILABLE)
    changed = asyncio.Event()

    def on_message(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member == "MeshChanged" \
                and msg.interface == CONTROLLER_INTERFACE:
            changed.set()
    bus.add_message_handler(on_message)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',interface='{CONTROLLER_INTERFACE}',member='MeshChanged'"]))
    tty = sys.stdout.isatty()
    try:
        while True:
            changed.clear()  # (before reading: a change while we read is drawn next round)
            (raw,) = await _controller_call("ListNodes")
            nodes = [_unvariant(n) for n in raw]
            rows = [[n["overlay_ip"], n["name"], path_text(n),
                     f"{n['rtt_ms']:.0f} ms" if n["rtt_ms"] >= 0 and n["reachable"] else "-",
                     _ago(n["last_handshake"])] for n in nodes]
            head = time.strftime("%H:%M:%S") + f"  {len(nodes)} other node(s)"
            click.echo(("\x1b[2J\x1b[H" if tty else "") + head + "\n"
                       + _table(rows, ["ADDRESS", "NODE", "PATH", "RTT", "HANDSHAKE"]) + ("" if tty else "\n"))
            try:
                await asyncio.wait_for(changed.wait(), refresh)
            except TimeoutError:
                pass
    finally:
        bus.disconnect()


@main.command()
@click.option("--keep", is_flag=True, help="leave the mesh running until Ctrl-C")
def demo(keep):
    """Build alice, bob and charlie in network namespaces and watch the mesh form (root)."""
    try:
        from wg_netmanager.lab.demo import run_demo
    except ImportError:
        fail("the demo is part of the lab, which is not installed: run it from a checkout with "
             "'sudo bash scripts/dev.sh demo' (or pip install ./lab)", EXIT_CONFIG)
    if os.geteuid() != 0:
        fail("the demo builds network namespaces: run it as root", EXIT_CONFIG)
    sys.exit(run_demo(keep=keep))


if __name__ == "__main__":
    main()
