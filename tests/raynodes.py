"""Real Ray nodes for the cluster tests: `ray start` processes on localhost, each with its own
environment (a node of its own: scratch, cache and home directories), and the jobs run as users
run them (`python jobs/<job>.py ...` in a subprocess)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    """A port free on every interface. Ray servers bind all interfaces or the machine's own
    address, so a port free only on 127.0.0.1 may be held on the node's address (a Ray worker's
    connection, say) and a head started on it exits at once."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict:
    # `python` in a submitted job must be this environment's interpreter.
    # Token authentication is on by default (Ray 2.60): every client sends ~/.ray/auth_token.
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        **extra,
    }


NODE_DIRS: list[Path] = []  # every node_env's directory, removed after its test (conftest)
NODES_ROOT = Path(f"/tmp/rn-{os.getpid()}")  # every node's directory lies here (short: Unix socket paths)

# Run in a private mount namespace, a node sees only its own directory under NODES_ROOT: a tmpfs is
# mounted over NODES_ROOT and the node's own directory bound back into it. A path written on one
# node (a SynthRad cache, a checkpoint part) does not exist on another, as on a real cluster.
PRIVATE_SCRIPT = """set -e
keep=$(mktemp -d /tmp/.rn-keep-XXXXXX)
mount --bind "$RAYNODE_DIR" "$keep"
mount -t tmpfs -o size=8g raynodes "$RAYNODES_ROOT"
mkdir -p "$RAYNODE_DIR"
mount --bind "$keep" "$RAYNODE_DIR"
umount "$keep" && rmdir "$keep"
exec "$@"
"""


def private_filesystems() -> bool:
    """Whether this machine lets a process take a private mount namespace (root, or a container
    with CAP_SYS_ADMIN); without it the nodes share one disk (and say so in the tests)."""
    if not hasattr(private_filesystems, "ok"):
        try:
            p = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                               timeout=30)
            private_filesystems.ok = p.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            private_filesystems.ok = False
    return private_filesystems.ok


def on_node(cmd: list[str], environ: dict, node: subprocess.Popen | None = None, *, machine: bool = False) -> list[str]:
    """``cmd`` as a process of a machine of its own: in ``node``'s mount and process namespaces (a
    Ray driver on that node: it sees that node's files and finds that node's raylet among the
    processes it sees, as on a machine of its own), else in private namespaces of its own
    (``machine``: also a process namespace, as a Ray node needs). As it is where namespaces are
    not available."""
    if not private_filesystems() or "RAYNODE_DIR" not in environ:
        return cmd
    if node is not None:
        return ["nsenter", "-t", str(namespace_pid(node)), "-m", "-p", "--", *cmd]
    own = ["--pid", "--fork", "--mount-proc"] if machine else []
    return ["unshare", "--mount", "--propagation", "private", *own, "sh", "-c", PRIVATE_SCRIPT, "sh", *cmd]


def namespace_pid(node: subprocess.Popen, timeout: float = 30) -> int:
    """The process (seen from here) that is PID 1 of ``node``'s namespaces: `unshare --fork`'s child."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with suppress(OSError):
            children = Path(f"/proc/{node.pid}/task/{node.pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.1)
    raise TimeoutError(f"node process {node.pid} started no namespace")


def remove_node_dirs() -> None:
    """Remove the node directories made so far: each holds a Ray session and a cache (hundreds of MB)."""
    while NODE_DIRS:
        shutil.rmtree(NODE_DIRS.pop(), ignore_errors=True)
    with suppress(OSError):  # only when no failed test's node is kept there
        NODES_ROOT.rmdir()


ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where `ray start` records its address (default TMPDIR)


@contextmanager
def ray_node(*args: str, environ: dict | None = None):
    """`ray start --block` in its own process group, killed (with its Ray processes) on exit.
    (`ray stop` would also stop every other Ray on the machine, e.g. the test session's.)
    The address file `ray start` leaves behind is put back as it was. Each node's dashboard agent
    gets a free port: the default (52365) is taken by any other Ray on the machine, such as the
    test session's embedded one, and a head without its agent refuses every job submission.
    A head is waited for until its GCS takes connections; one that exits or does not come up
    fails here with its own output, not minutes later in a client that cannot connect."""
    # A test's node is thrown away at its end: nothing to drain. (On SIGTERM Ray's default drains
    # the node for up to 30 s first, for Ray Serve; a head used ~30 s of it with both cores idle.)
    environ = {**(environ or env()), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    before = ADDRESS_FILE.read_text() if ADDRESS_FILE.exists() else None
    log = Path(tempfile.mkstemp(prefix="ray-start-", suffix=".log", dir=environ.get("TMPDIR"))[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            on_node([RAY, "start", "--block", "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                     *args], environ, machine=True),
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    proc.log = log
    try:
        if "--head" in args:
            port = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--port="))
            wait_for_head(proc, port, environ)
        yield proc
    finally:
        with suppress(ProcessLookupError):  # a head that exited while starting: its error is raised
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if before is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_text(before)


def node_output(proc: subprocess.Popen, environ: dict) -> str:
    """What a node said: `ray start`'s output and the tails of its GCS logs."""
    parts = [f"--- ray start (exit {proc.poll()}):\n{proc.log.read_text(errors='replace')[-3000:]}"]
    for f in sorted(Path(environ.get("TMPDIR", "/tmp")).glob("ray/session_latest/logs/gcs_server.*")):
        parts.append(f"--- {f.name}:\n{f.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def wait_for_head(proc: subprocess.Popen, port: int, environ: dict, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head on port {port} exited while starting\n{node_output(proc, environ)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(
        f"the Ray head's GCS took no connection on port {port} in {timeout:.0f} s\n{node_output(proc, environ)}"
    )


def wait_for_nodes(address: str, n: int, timeout: float = 120, environ: dict | None = None) -> None:
    code = (
        f"import ray; ray.init(address='{address}', log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.time() + timeout
    said = ""
    while time.time() < deadline:
        try:  # a client that cannot reach the GCS retries for minutes: bound each probe
            p = subprocess.run(
                [sys.executable, "-c", code],
                env=environ or env(),
                capture_output=True,
                text=True,
                timeout=max(5.0, min(60.0, deadline - time.time())),
            )
        except subprocess.TimeoutExpired as e:
            said = "(a probe timed out) " + (e.stderr or b"").decode(errors="replace")[-3000:]
            continue
        lines = p.stdout.strip().splitlines()
        if p.returncode == 0 and lines and int(lines[-1]) >= n:
            return
        said = (p.stdout + p.stderr)[-3000:]
        time.sleep(2)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address} in {timeout:.0f} s: {said}")


# A six-step tiny pre-training with one checkpoint and no validation, as `jobs/pretrain.py` arguments.
SHORT_RUN = ["--config", "tiny", "--steps", "6", "--set", "train.checkpoint_every=6", "--set", "train.val_every=0",
             "--set", "data.loader_workers=0"]  # fmt: skip


def job(name: str, *args: str, environ: dict, timeout: int = 600,
        node: subprocess.Popen | None = None) -> subprocess.CompletedProcess:
    """`python jobs/<name>.py ARGS` with this environment's interpreter, on ``node`` (its mount
    namespace: a driver of the cluster from that machine) or on a machine of its own."""
    cmd = on_node([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], environ, node)
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)


def pretrain(*args: str, environ: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return job("pretrain", *args, environ=environ, timeout=timeout)


def node_env(root: Path, name: str, **extra: str) -> dict:
    """The environment of one machine of a cluster: its own scratch (TMPDIR: Ray's session files
    too), raymmr cache and home directory, so nothing one node writes is visible on another
    except through the object store. Ray's token comes in RAY_AUTH_TOKEN (a home of its own has
    no ~/.ray/auth_token). DeepSpeed's compiled ops stay where this machine built them: a
    cluster image ships them built (TORCH_EXTENSIONS_DIR), and they hold no run data."""
    # Short paths: Ray's Unix sockets live under TMPDIR (a socket path has at most 107 bytes).
    NODES_ROOT.mkdir(exist_ok=True)
    node = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=NODES_ROOT))
    NODE_DIRS.append(node)  # removed after the test, kept when it fails (conftest)
    (root / f"{name}.dirs").write_text(str(node))  # where to look when a test fails
    dirs = {"TMPDIR": node / "tmp", "RAYMMR_CACHE": node / "cache", "HOME": node / "home"}
    for d in dirs.values():
        d.mkdir()
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    return env(**{k: str(v) for k, v in dirs.items()}, TORCH_EXTENSIONS_DIR=extensions,
               RAYNODE_DIR=str(node), RAYNODES_ROOT=str(NODES_ROOT), **extra)
