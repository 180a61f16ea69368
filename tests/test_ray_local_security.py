"""What a private local Ray instance (`regbench run` on one machine) exposes, checked on a real run.

While a run's first trial is running, the test lists every socket that the run's processes (its
session: the driver, the GCS, the raylet, the agents, the metrics servers, the workers) listen on,
and checks, socket by socket:

  * it is bound to loopback (connect.py starts the node with 127.0.0.1 as its IP, which is what
    makes every Ray service bind there), and a connection to the same port on each of this
    machine's outward addresses is refused;
  * behind that, on loopback itself (where any local user can reach it), the service refuses a
    client without Ray's token: a gRPC call gets UNAUTHENTICATED (GCS, raylet node and object
    manager, core workers, dashboard agent), an HTTP request gets 401 (dashboard agent, runtime env
    agent). The Prometheus metrics servers (autoscaler monitor, dashboard head, dashboard agent)
    have no authentication at all: they may only be reachable on loopback. The dashboard and
    its job API are not started.

Then the run is interrupted (Ctrl-C) and every process of it must be gone.
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import pathlib
import signal
import socket
import time

import psutil
import pytest

from tests.test_ray_local import finish, ray_env, start_run, tiny_suite, wait_for

pytestmark = pytest.mark.slow

# One method of each gRPC service a local instance runs. Each call goes out without a token, so
# no handler runs: an authenticating server answers UNAUTHENTICATED, a server without that service
# UNIMPLEMENTED.
GRPC_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # GCS
    "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet: node manager
    "/ray.rpc.ObjectManagerService/Pull",  # raylet: object manager
    "/ray.rpc.CoreWorkerService/NumPendingTasks",  # driver and workers
    "/ray.rpc.LogService/ListLogs",  # dashboard agent
)
GCS_METHOD = GRPC_METHODS[0]


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def outward_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (what another machine would connect to)."""
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not is_loopback(a.address)})


def describe(proc: psutil.Process) -> str:
    """gcs_server, raylet, ray::DashboardAgent, ...; for a Python process its script or module
    (monitor.py, dashboard.py, bench.cli)."""
    name = proc.name()
    if name.startswith("python"):
        args = proc.cmdline()[1:]
        for i, arg in enumerate(args):
            if arg == "-m" and i + 1 < len(args):
                return args[i + 1]
            if arg.endswith(".py"):
                return os.path.basename(arg)
    return name


def session_sockets(sid: int) -> dict[tuple[str, int], tuple[int, str, str]]:
    """(bound ip, port) -> (pid, process, 'tcp'|'udp') for every TCP listener and unconnected UDP
    socket of the processes in session `sid`."""
    found = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) != sid:
                continue
            for c in proc.net_connections(kind="inet"):
                tcp = c.type == socket.SOCK_STREAM
                if (tcp and c.status == psutil.CONN_LISTEN) or (not tcp and not c.raddr):
                    found[(c.laddr.ip, c.laddr.port)] = (proc.pid, describe(proc), "tcp" if tcp else "udp")
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def foreign_listener(ip: str, port: int, ours: set[int]) -> bool:
    """Someone else on this machine (another Ray instance...) listens on ip:port or its wildcard."""
    for c in psutil.net_connections(kind="tcp"):
        if (c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid not in ours
                and c.laddr.ip in (ip, "0.0.0.0", "::", f"::ffff:{ip}")):
            return True
    return False


def refused_from(ip: str, port: int) -> str | None:
    """None when a TCP connection to ip:port is refused, else what happened."""
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return "accepted"
    except ConnectionRefusedError:
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def http_status(host: str, port: int) -> tuple[int, str] | None:
    """(status, start of body) of `GET /` on host:port; None when it does not speak HTTP/1.1 (gRPC
    servers speak HTTP/2 only)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read(200).decode(errors="replace")
    except (http.client.HTTPException, ConnectionError, socket.timeout):
        return None
    finally:
        conn.close()


def grpc_codes(host: str, port: int, metadata=None, methods=GRPC_METHODS) -> dict[str, str]:
    import grpc

    codes = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in methods:
            try:
                channel.unary_unary(method)(b"", timeout=5, metadata=metadata)
                codes[method] = "OK"
            except grpc.RpcError as e:
                codes[method] = e.code().name
    return codes


def ray_token() -> str:
    """The token this user's Ray instances use (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return pathlib.Path(path).read_text().strip()


def reach(ip: str) -> str:
    """The address a client uses to reach a socket bound to ip: that address, or for a wildcard
    bind this machine's outward address (loopback where it has none)."""
    if ip in ("0.0.0.0", "::"):
        return (outward_addresses() or ["127.0.0.1"])[0]
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address):
        return str(addr.ipv4_mapped) if addr.ipv4_mapped else f"[{addr}]"
    return ip


def probe(sockets) -> list[dict]:
    """What an unauthenticated client gets from each socket: through each outward address of this
    machine (`outside`: None when refused), and through the address it is bound to (loopback,
    once connect.py has done its job)."""
    rows = []
    ours = {pid for pid, _, _ in sockets.values()}
    for (ip, port), (pid, name, proto) in sorted(sockets.items(), key=lambda kv: kv[0][1]):
        row = {"pid": pid, "process": name, "bound": f"{ip}:{port}", "proto": proto, "outside": {}}
        if proto == "tcp":
            for out_ip in outward_addresses():
                if not foreign_listener(out_ip, port, ours):  # else that port there is someone else's
                    row["outside"][out_ip] = refused_from(out_ip, port)
            host = reach(ip)
            answer = http_status(host.strip("[]"), port)
            if answer is not None:
                row["kind"], row["answer"] = "http", f"HTTP {answer[0]}"
                row["metrics"] = answer[0] == 200 and answer[1].startswith("# ")
            else:
                codes = grpc_codes(host, port)
                row["kind"] = "grpc"
                row["answer"] = ", ".join(f"{m.rsplit('/', 2)[1].removeprefix('ray.rpc.')} {c}"
                                          for m, c in codes.items() if c != "UNIMPLEMENTED")
                row["codes"] = codes
        rows.append(row)
    return rows


def gcs_answer(host: str, port: int, token: str) -> str:
    return grpc_codes(host, port, (("authorization", f"Bearer {token}"),), (GCS_METHOD,))[GCS_METHOD]


def table(rows) -> str:
    return "\n".join(f"  {r['pid']:>7} {r['process'][:22]:22} {r['bound']:24} {r.get('kind', r['proto']):5} "
                     f"{r.get('answer', '')}" for r in rows)


def test_local_instance_listens_on_loopback_only_and_refuses_unauthenticated_clients(tmp_path):
    t0 = time.monotonic()
    markers = tmp_path / "markers"
    markers.mkdir()
    # one trial that outlives the probing; the run is interrupted (Ctrl-C) once the probe is done
    suite = tiny_suite(tmp_path, name="sec", regularizers="[none]", repeats=1)
    suite.write_text(suite.read_text().replace("epochs: 2", "epochs: 100000"))
    proc = start_run(["--suite", str(suite)], ray_env(REGBENCH_RAY_MARKER_DIR=markers), tmp_path / "out")
    try:
        wait_for(lambda: list(markers.glob("*.json")), 120, "the trial to start", proc)

        def instance_up():
            found = session_sockets(proc.pid)
            names = {name for _, name, _ in found.values()}
            return found if {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names) else None

        sockets = wait_for(instance_up, 30, "the GCS, the raylet and a worker to listen", proc)
        time.sleep(1.0)  # agents may still be opening their last ports
        sockets = {**sockets, **session_sockets(proc.pid)}
        rows = probe(sockets)
        # the refusal is for the token: the same GCS call with it is answered, with a wrong one not
        gcs_ip, gcs_port = next(key for key, (_, name, _) in sockets.items() if name == "gcs_server")
        with_token = gcs_answer(reach(gcs_ip), gcs_port, ray_token())
        wrong_token = gcs_answer(reach(gcs_ip), gcs_port, "0" * 64)
        still_running = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    report = f"listening sockets of the run's Ray instance:\n{table(rows)}"
    print(report)  # with -s: the evidence bench/README.md's "Security of a local run" quotes
    rc, out, err = finish(proc, timeout_s=90)  # and every process of the run is gone
    assert still_running, f"the run ended while it was being probed:\n{err[-2000:]}"
    assert rc == 130, err[-2000:]

    # 1. every socket is bound to loopback, and nothing answers on the outward addresses
    exposed = [r for r in rows if not is_loopback(r["bound"].rsplit(":", 1)[0])]
    assert not exposed, f"bound beyond loopback:\n{table(exposed)}\n{report}"
    answered = {f"{r['process']} {ip}:{r['bound'].rsplit(':', 1)[1]}": what
                for r in rows for ip, what in r["outside"].items() if what is not None}
    assert not answered, f"reachable from outside loopback: {answered}\n{report}"

    # 2. on loopback, every service refuses a client without the token, except the metrics servers
    assert any(r.get("kind") == "grpc" for r in rows), report
    for r in rows:
        if r.get("kind") == "grpc":
            codes = r["codes"]
            assert "UNAUTHENTICATED" in codes.values() and "OK" not in codes.values(), \
                f"{r['bound']} ({r['process']}): {codes}\n{report}"
        elif r.get("kind") == "http" and not r["metrics"]:
            assert r["answer"] in ("HTTP 401", "HTTP 403"), f"{r['bound']} ({r['process']})\n{report}"
    gcs = [r for r in rows if r["process"] == "gcs_server" and r.get("kind") == "grpc"]
    assert len(gcs) == 1 and gcs[0]["codes"][GCS_METHOD] == "UNAUTHENTICATED", report
    assert (with_token, wrong_token) == ("OK", "UNAUTHENTICATED"), report
    raylet = [r for r in rows if r["process"] == "raylet"]
    assert len(raylet) == 2 and all(r.get("kind") == "grpc" for r in raylet), report
    # the unauthenticated metrics servers belong to Ray's monitor, dashboard head and agent only
    metrics = [r for r in rows if r.get("metrics")]
    assert all(r["process"] in ("monitor.py", "dashboard.py", "ray::DashboardAgent") for r in metrics), report
    # no dashboard, no job API (Ray's dashboard HTTP answers on 8265 by default)
    assert not any(r["bound"].endswith(":8265") for r in rows), report
    assert time.monotonic() - t0 < 90
