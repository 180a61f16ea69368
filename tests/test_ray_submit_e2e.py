"""End to end, for real: `ray up` / `ray submit` / `ray rsync-down` / `ray down` over loopback ssh.

What it builds (all of it removed again at the end, processes by pid):
  * a dedicated non-root user (password field '*', so sshd accepts its key) with an ed25519 key;
  * two private sshd processes on 127.0.0.2 and 127.0.0.3 (a free port, the same on both), never
    the machine's own sshd or its config. 127.0.0.1 is not used as a node address on purpose: Ray
    rewrites "127.0.0.1" to the machine's outward IP, while other 127/8 addresses stay as they are,
    so every byte here stays on the loopback interface. The 127.0.0.3 sshd runs in its own PID
    namespace (like a container) when the kernel allows it: the worker's `ray stop` would
    otherwise kill the head's processes, which live on the same machine. Without that, the test
    runs a one-node cluster and says why;
  * the user's environment, as a node would have it: a virtualenv (~/regbench-venv) on a Python of
    the same version as this one, reusing this project's installed dependencies through a .pth
    file (no network), pip configured offline (no index, no build isolation), and a per-node
    RAY_TMPDIR. The YAML's own setup_commands then `pip install -e` the project into it;
  * a loopback YAML generated from clusters/onprem.yaml by substituting only the addresses, the
    ssh user and key, and the cluster name; setup and start commands stay as shipped.

Then: `ray up` (two nodes), a probe (both nodes alive with their `regbench_node_slot`, SPREAD tasks
land on each, a wrong token is refused), `ray submit clusters/regbench_job.py -- --suite smoke`,
`ray rsync-down` of the run directory, `regbench report` on it here, `ray down`.

If this project's venv is somewhere the user cannot read (under /root), its site-packages are
bind-mounted read-only into the test's temp dir for the length of the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
USER = "rbe2e"
HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"
CLUSTER_NAME = "regbench-loopback"

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ensure_packages() -> None:
    need = []
    if not pathlib.Path("/usr/sbin/sshd").exists():
        need.append("openssh-server")
    if shutil.which("rsync") is None:
        need.append("rsync")
    if shutil.which("ssh") is None:
        need.append("openssh-client")
    if need:
        _log(f"installing {need}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need],
                       check=True, env=env, timeout=300, stdout=subprocess.DEVNULL)


def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((HEAD_IP, 0))
            port = a.getsockname()[1]
            try:
                b.bind((WORKER_IP, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on both 127.0.0.2 and 127.0.0.3")


def _user_python() -> str:
    """A Python of this version that the dedicated user can execute (ours may sit in /root)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        getattr(sys, "_base_executable", None),
        os.path.realpath(sys.executable),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            ["runuser", "-u", USER, "--", candidate, "-c",
             "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    pytest.fail(f"no Python {version} executable by user {USER} (tried {candidates}); "
                f"install python{version} from the distribution")


def _kill_pids(pids, sig=signal.SIGTERM) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


RAY_PROCESS_MARKS = ("raylet", "gcs_server", "default_worker.py", "ray::", "dashboard/agent.py",
                     "log_monitor.py", "autoscaler/_private/monitor.py", "runtime_env/agent")


def _is_ray_process(pid: int) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return any(mark in cmdline for mark in RAY_PROCESS_MARKS)


class Loopback:
    """The machinery above, with `run_as_user` for the Ray CLI."""

    def __init__(self) -> None:
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="rbe2e-", dir="/tmp"))
        self.tmp.chmod(0o755)
        self.sshd: list[subprocess.Popen] = []
        self.mounts: list[pathlib.Path] = []
        self.created_user = False
        self.uid = None
        self.home = None
        self.two_nodes = False
        self.why_one_node = ""

    # --- setup
    def create_user(self) -> None:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(USER)
            # Left over from a killed run: everything it owns goes with it.
            _kill_pids(_pids_of_uid(pwd.getpwnam(USER).pw_uid), signal.SIGKILL)
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
        self.created_user = True
        subprocess.run(["usermod", "-p", "*", USER], check=True)  # no password, not locked
        entry = pwd.getpwnam(USER)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, pathlib.Path(entry.pw_dir)
        self.local_tmp = self.tmp / "localtmp"  # TMPDIR and RAY_TMPDIR of the local Ray CLI
        self.local_tmp.mkdir()
        os.chown(self.local_tmp, self.uid, self.gid)

    def write_user_file(self, relative: str, text: str, mode: int = 0o644) -> pathlib.Path:
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        for p in [path, *path.parents]:
            if p == self.home.parent:
                break
            os.chown(p, self.uid, self.gid)
        return path

    def start_sshd(self, port: int) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.tmp / "host_key")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rbe2e", "-f", str(self.tmp / "user_key")], check=True)
        self.key = self.write_user_file(".ssh/id_rbe2e", (self.tmp / "user_key").read_text(), 0o600)
        self.write_user_file(".ssh/authorized_keys", (self.tmp / "user_key.pub").read_text(), 0o600)
        self.write_user_file(".ssh/config", f"Host {HEAD_IP} {WORKER_IP}\n  Port {port}\n", 0o600)
        (self.home / ".ssh").chmod(0o700)
        pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        unshare = shutil.which("unshare")
        namespaced = False
        if unshare:
            namespaced = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                                        capture_output=True).returncode == 0
        for name, address in (("head", HEAD_IP), ("worker", WORKER_IP)):
            config = self.tmp / f"sshd_{name}.conf"
            config.write_text(
                f"ListenAddress {address}:{port}\n"
                f"HostKey {self.tmp / 'host_key'}\n"
                f"PidFile {self.tmp / f'sshd_{name}.pid'}\n"
                "AuthorizedKeysFile .ssh/authorized_keys\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                f"UsePAM no\nAllowUsers {USER}\nPermitRootLogin no\nX11Forwarding no\nPrintMotd no\n"
                "MaxSessions 50\nMaxStartups 50\n"
            )
            subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
            command = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
            if name == "worker":
                if not namespaced:
                    self.why_one_node = ("`unshare --pid` is not permitted here, and without a PID "
                                         "namespace the worker's `ray stop` kills the head")
                    continue
                command = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", *command]
            log = open(self.tmp / f"sshd_{name}.log", "w")
            self.sshd.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        self.two_nodes = namespaced
        deadline = time.time() + 20
        for address in ([HEAD_IP, WORKER_IP] if namespaced else [HEAD_IP]):
            while True:
                probe = self.run_as_user(["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                                          "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                                          address, "true"], timeout=20, check=False)
                if probe.returncode == 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"sshd on {address}:{port} does not accept the key: {probe.stdout[-500:]}")
                time.sleep(0.3)

    def share_dependencies(self) -> None:
        """Pick the user's Python and make this project's site-packages readable to the user.

        Runs before the sshd start: the worker's sshd gets its own mount namespace, which must
        already contain the bind mount (if one is needed)."""
        self.python = _user_python()
        site_packages = sysconfig.get_paths()["purelib"]
        readable = self.run_as_user([self.python, "-c", f"import sys; sys.path.append({site_packages!r}); import ray"],
                                    check=False, timeout=120)
        if readable.returncode != 0 or os.environ.get("REGBENCH_E2E_FORCE_BIND"):
            # This project's venv sits where the user cannot reach (e.g. under /root): show the
            # same files at a path it can reach, read-only, for the length of the test.
            shared = self.tmp / "shared-site-packages"
            shared.mkdir()
            subprocess.run(["mount", "--bind", site_packages, str(shared)], check=True)
            self.mounts.append(shared)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(shared)], check=True)
            site_packages = str(shared)
        self.site_packages = site_packages

    def prepare_node_environment(self) -> None:
        python, site_packages = self.python, self.site_packages
        venv = self.home / "regbench-venv"
        self.run_as_user([python, "-m", "venv", "--without-pip", str(venv)])
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        self.write_user_file(f"regbench-venv/lib/{version}/site-packages/_regbench_shared_deps.pth",
                             site_packages + "\n")
        self.write_user_file("regbench-venv/bin/ray",
                             f"#!{venv}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n",
                             0o755)
        self.write_user_file(".config/pip/pip.conf",
                             "[global]\nno-index = true\ndisable-pip-version-check = true\n"
                             "[install]\nno-build-isolation = false\n")
        bashrc = (self.home / ".bashrc").read_text() if (self.home / ".bashrc").exists() else ""
        self.write_user_file(".bashrc", bashrc + (
            "\n# regbench loopback node: one Ray temp dir per node address, no usage stats\n"
            "export RAY_TMPDIR=/tmp/rbe2e-$(echo $SSH_CONNECTION | cut -d' ' -f3)\n"
            "export RAY_USAGE_STATS_ENABLED=0\n"
        ))
        # The project as `ray up` sees it from the repository root (readable by the user).
        self.project = self.tmp / "project"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        self.project.mkdir()
        shutil.copy2(REPO / "pyproject.toml", self.project / "pyproject.toml")
        for name in ("bench", "analysis", "clusters"):
            shutil.copytree(REPO / name, self.project / name, ignore=ignore)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.project)], check=True)
        probe = self.run_as_user([f"{venv}/bin/python", "-c", "import ray, keras, tensorflow"], check=False, timeout=180)
        assert probe.returncode == 0, f"user {USER} cannot import this project's dependencies: {probe.stdout[-2000:]}"
        self.run_as_user(["ray", "get-auth-token", "--generate"], timeout=60)

    def write_cluster_yaml(self) -> pathlib.Path:
        config = yaml.safe_load((REPO / "clusters" / "onprem.yaml").read_text())
        config["cluster_name"] = CLUSTER_NAME
        config["provider"]["head_ip"] = HEAD_IP
        config["provider"]["worker_ips"] = [WORKER_IP] if self.two_nodes else []
        config["auth"] = {"ssh_user": USER, "ssh_private_key": str(self.key)}
        path = self.tmp / "loopback.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o644)
        return path

    # --- running things
    def user_env(self) -> dict:
        return {
            "HOME": str(self.home), "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash",
            "PATH": f"{self.home}/regbench-venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8", "TMPDIR": str(self.local_tmp), "RAY_TMPDIR": str(self.local_tmp),
            "RAY_UP_enable_autoscaler_v2": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
        }

    def run_as_user(self, command, timeout=300, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            command, cwd=getattr(self, "project", self.tmp), env=self.user_env(),
            user=self.uid, group=self.gid, extra_groups=[], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}")
        return result

    def ray(self, *args, timeout=300, check=True) -> str:
        started = time.time()
        result = self.run_as_user(["ray", args[0], "--log-style", "record", *args[1:]],
                                  timeout=timeout, check=check)
        _log(f"ray {args[0]} took {time.time() - started:.1f}s (exit {result.returncode})")
        return result.stdout.replace("\r", "")

    def diagnostics(self) -> str:
        """Tails of the head's autoscaler and the nodes' raylet logs, for a failure message."""
        parts = []
        for address in (HEAD_IP, WORKER_IP):
            logs = pathlib.Path(f"/tmp/rbe2e-{address}/ray/session_latest/logs")
            for name in ("monitor.out", "monitor.err", "monitor.log", "raylet.err"):
                with contextlib.suppress(OSError):
                    tail = (logs / name).read_text(errors="replace")[-1500:]
                    if tail.strip():
                        parts.append(f"--- {address} {name}\n{tail}")
        return "\n".join(parts)

    # --- teardown
    def close(self) -> None:
        if getattr(self, "cluster_yaml", None) is not None:
            with contextlib.suppress(Exception):
                self.ray("down", "-y", str(self.cluster_yaml), timeout=120, check=False)
        for process in self.sshd:  # the namespaced one takes its whole PID namespace with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.sshd:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self.uid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever the user still runs (raylets...)
                pids = _pids_of_uid(self.uid)
                if not pids:
                    break
                _kill_pids(pids, sig)
                time.sleep(2)
            for leftover in pathlib.Path("/tmp").iterdir():  # ssh control sockets, Ray temp dirs
                with contextlib.suppress(OSError):
                    if leftover.stat().st_uid == self.uid:
                        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        for mount in self.mounts:
            subprocess.run(["umount", str(mount)], capture_output=True)
        if self.created_user:
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def loopback():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a user and starts a private sshd (CI runs as root)")
    _ensure_packages()
    cluster = Loopback()
    try:
        cluster.create_user()
        cluster.share_dependencies()
        cluster.start_sshd(_free_port())
        cluster.prepare_node_environment()
        cluster.cluster_yaml = cluster.write_cluster_yaml()
        yield cluster
    finally:
        cluster.close()


PROBE = '''
import time, ray
ray.init()
want = {want}
deadline = time.time() + 120
while len([n for n in ray.nodes() if n["Alive"]]) < want and time.time() < deadline:
    time.sleep(1)
nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
print("PROBE nodes", ",".join(nodes))
print("PROBE node slots", int(ray.cluster_resources().get("regbench_node_slot", 0)))

@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where():
    time.sleep(0.5)
    return ray.util.get_node_ip_address()

print("PROBE tasks", ",".join(sorted(set(ray.get([where.remote() for _ in range(4)])))))

# Token authentication is really on: the same connection with a wrong token is refused.
import os, subprocess, sys
env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-cluster-token")
try:
    wrong = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print('CONNECTED')"],
                           env=env, capture_output=True, text=True, timeout=60)
    refused = wrong.returncode != 0 and "CONNECTED" not in wrong.stdout
except subprocess.TimeoutExpired:
    refused = True
print("PROBE wrong token refused", refused)
'''


def test_ray_up_submit_rsync_down_report_down(loopback, tmp_path):
    try:
        _up_submit_rsync_down_report_down(loopback, tmp_path)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n\n{loopback.diagnostics()}") from None


def _up_submit_rsync_down_report_down(loopback, tmp_path):
    started = time.time()
    cluster_yaml = str(loopback.cluster_yaml)
    if not loopback.two_nodes:
        _log(f"one-node cluster: {loopback.why_one_node}")

    up = loopback.ray("up", "-y", cluster_yaml, timeout=300)
    assert f"Local node IP: {HEAD_IP}" in re.sub(r"\x1b\[[0-9;]*m", "", up), up[-3000:]

    # Placement: Ray itself sees every node and SPREAD tasks land on each of them.
    want = 2 if loopback.two_nodes else 1
    probe = loopback.tmp / "placement_probe.py"
    probe.write_text(PROBE.format(want=want))
    probe.chmod(0o644)
    out = loopback.ray("submit", cluster_yaml, str(probe), timeout=240)
    expected_nodes = [HEAD_IP, WORKER_IP][:want]
    assert f"PROBE nodes {','.join(expected_nodes)}" in out, out[-3000:]
    assert f"PROBE tasks {','.join(expected_nodes)}" in out, out[-3000:]
    assert f"PROBE node slots {want}" in out, out[-3000:]
    assert "PROBE wrong token refused True" in out, out[-3000:]

    # The benchmark itself, through the shipped entry script.
    executor = "ray" if importlib.util.find_spec("ray") else "process"
    out = loopback.ray("submit", cluster_yaml, "clusters/regbench_job.py", "--",
                       "--suite", "smoke", "--executor", executor, "--no-report", timeout=300)
    if executor == "ray":  # joined because the entry script says so, and the run says where
        assert "--address auto" in out and "ray: joined the Ray cluster at" in out, out[-4000:]
    match = re.search(r"regbench-job: results in (\S+)", out)
    assert match, f"entry script did not report a results dir:\n{out[-4000:]}"
    remote_run = match.group(1)
    assert remote_run.startswith(str(loopback.home / "regbench" / "results")), remote_run

    fetched = loopback.local_tmp / "fetched"
    loopback.ray("rsync-down", cluster_yaml, remote_run + "/", str(fetched) + "/", timeout=120)
    trial_files = sorted((fetched / "trials").glob("*.json"))
    assert trial_files, f"nothing fetched into {fetched}: {list(fetched.rglob('*'))[:20]}"
    records = [json.loads(p.read_text()) for p in trial_files]
    statuses = [r["status"] for r in records]
    assert "ok" in statuses, statuses
    assert set(statuses) <= {"ok", "skipped"}, [(r["status"], r.get("reason")) for r in records]

    if executor == "ray":  # every trial ran on a node of this cluster, recorded in the manifest
        manifest = json.loads((fetched / "manifest.json").read_text())
        ran_on = {p.get("ip") for p in manifest.get("placements", {}).values()}
        assert ran_on and ran_on <= set(expected_nodes), (ran_on, expected_nodes)
        _log(f"trials ran on {sorted(ran_on)}")

    local_run = tmp_path / pathlib.Path(remote_run).name
    shutil.copytree(fetched, local_run)
    report = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(local_run)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (local_run / "report" / "index.html").is_file()

    loopback.ray("down", "-y", cluster_yaml, timeout=120)
    leftover = [pid for pid in _pids_of_uid(loopback.uid) if _is_ray_process(pid)]
    assert not leftover, f"ray processes left after ray down: {leftover}"
    loopback.cluster_yaml = None  # already down
    _log(f"ray up -> down with {want} node(s), executor {executor}: {time.time() - started:.0f}s")
