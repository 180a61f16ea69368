"""Entry script that `ray submit` (or `ray job submit`) runs on the head node of a Ray cluster.

    ray submit clusters/onprem.yaml clusters/regbench_job.py -- --suite quick
    ray job submit --working-dir . -- python clusters/regbench_job.py --suite quick

Everything after `--` is passed to `regbench run`. Unless given, it adds
    --executor ray                     (the trials spread over every node of the cluster)
    --address auto                     (with the ray executor: join the cluster this node belongs to)
    --out <project>/results            (on the head node; fetch it with `ray rsync-down`)
where <project> is $REGBENCH_HOME, else ~/regbench (where the launcher YAMLs' file_mounts put
the repository), else the current directory (the working dir `ray job submit` uploaded).

`regbench run` joins a cluster only when told (an address file on the node is not enough), so
the address is passed explicitly. With token authentication (the YAMLs in clusters/ switch it on) the token is read from
~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN; this script sets RAY_AUTH_MODE=token
when such a token exists and the mode was not chosen explicitly.

The run directory is printed on the last stdout line, as `regbench run` does, after a line
`regbench-job: results in <dir>` and the `ray rsync-down` command that fetches them.
Exit status: that of `regbench run`.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys


def project_dir() -> pathlib.Path:
    """The regbench checkout on this node."""
    if os.environ.get("REGBENCH_HOME"):
        return pathlib.Path(os.environ["REGBENCH_HOME"]).expanduser().resolve()
    home_copy = pathlib.Path("~/regbench").expanduser()
    if (home_copy / "bench" / "cli.py").is_file():
        return home_copy.resolve()
    return pathlib.Path.cwd().resolve()


def has_option(args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    token_file = pathlib.Path(path).expanduser()
    return token_file.is_file() and token_file.stat().st_size > 0


def option_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def build_command(args: list[str], project: pathlib.Path) -> list[str]:
    command = [sys.executable, "-m", "bench.cli", "run", *args]
    if not has_option(args, "--executor"):
        command += ["--executor", "ray"]
    if option_value(command, "--executor") == "ray" and not has_option(args, "--address"):
        command += ["--address", "auto"]
    if not has_option(args, "--out") and not has_option(args, "--resume"):
        command += ["--out", str(project / "results")]
    return command


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    project = project_dir()
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env and token_available():
        env["RAY_AUTH_MODE"] = "token"
    # Right after `ray up` (or with min_workers: 0) GPU nodes may still be joining: wait up to
    # 15 minutes for a node that can take the trials before calling a request infeasible.
    env.setdefault("REGBENCH_NODE_WAIT_S", "900")
    # `bench` importable even where the project was copied but not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(project), env.get("PYTHONPATH", "")) if p
    )
    command = build_command(args, project)
    print(f"regbench-job: {' '.join(command[1:])} (in {project})", file=sys.stderr, flush=True)

    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, text=True)
    last_line = ""
    assert process.stdout is not None
    for line in process.stdout:  # stream through, remember the last non-empty line
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.strip():
            last_line = line.strip()
    status = process.wait()
    if status != 0:
        print(f"regbench-job: regbench run failed with exit status {status}", file=sys.stderr)
        return status

    run_dir = pathlib.Path(last_line)
    if not run_dir.is_absolute():
        run_dir = (project / run_dir).resolve()
    if not run_dir.is_dir():
        print(f"regbench-job: regbench run did not print a run directory (last line: {last_line!r})",
              file=sys.stderr)
        return 1
    try:
        shown = "~/" + str(run_dir.relative_to(pathlib.Path.home()))
    except ValueError:
        shown = str(run_dir)
    print(f"regbench-job: results in {run_dir}")
    print(f"regbench-job: fetch them with: ray rsync-down <cluster.yaml> '{shown}/' results/{run_dir.name}/")
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
