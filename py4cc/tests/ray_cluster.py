"""A Ray cluster on 127.0.0.1 for the Ray backend's tests: a head node without CPUs and
worker nodes with one CPU each, every node started with ``ray start --block``, so that each
node is one process of ours, stopped by its pid (never ``ray stop``, which stops every Ray
process of the machine).

Run as a program, it starts a cluster, runs a command with ``RS4PY_RAY_ADDRESS`` set to the
cluster's address, stops the cluster (also when the command fails or is interrupted) and
exits with the command's status::

    python -m py4cc.tests.ray_cluster [--workers 2] [--temp-dir DIR] -- COMMAND...

Token authentication is off for these clusters (``RAY_AUTH_MODE=disabled``, in the nodes'
environment and, unless set, in this process's): they listen on loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

STARTED_MARKER = "Ray runtime started"
"""What ``ray start`` prints once its node is up."""
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
ADDRESS_VARIABLE = "RS4PY_RAY_ADDRESS"


def ray_command() -> list[str]:
    """The ``ray`` command of this interpreter's environment."""
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.path.exists(beside):
        return [beside]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_environment() -> dict[str, str]:
    """The nodes' environment: no PYTHONPATH (the actors must get py4cc and the Engine
    from their runtime environment, as on a real cluster), token authentication off, and
    a stopped node stops at once instead of draining for 30 s."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
    )
    return env


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Node:
    """One ``ray start --block`` process (a head or a worker node) and its log."""

    def __init__(self, process: subprocess.Popen[Any], log_path: str, head: bool) -> None:
        self.process = process
        self.log_path = log_path
        self.head = head

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if STARTED_MARKER in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ray start did not start a node (exit {self.process.returncode}):\n{self.log()[-3000:]}")

    def descendants(self) -> list[int]:
        return children(self.pid)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (its processes stop) or SIGKILL (they die with it), then wait; any of its
        processes still there are killed."""
        left = children(self.pid)
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_GRACE_S)
            except OSError:
                pass
        # `ray start --block` stops its node's processes as it exits; make sure of it.
        deadline = time.monotonic() + STOP_GRACE_S
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if running(pid)]
            time.sleep(0.1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class RayCluster:
    """A head node (its own, or an existing one's address) and the worker nodes added here."""

    def __init__(self, temp_dir: str | None = None, address: str | None = None) -> None:
        self.temp_dir = os.path.abspath(temp_dir or tempfile.mkdtemp(prefix="py4cc-ray-"))
        os.makedirs(self.temp_dir, exist_ok=True)
        self.address = address or ""
        self.head: Node | None = None
        self.workers: list[Node] = []
        self.count = 0
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    def start_node(self, args: Sequence[str], head: bool) -> Node:
        self.count += 1
        log_path = os.path.join(self.temp_dir, f"node-{self.count}{'-head' if head else ''}.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [*ray_command(), "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=node_environment(),
                cwd=self.temp_dir,
            )
        node = Node(process, log_path, head)
        node.wait_started()
        return node

    def start_head(self, num_cpus: int = 0, system_config: dict[str, Any] | None = None) -> None:
        port = free_port()
        args = ["--head", "--port", str(port), "--num-cpus", str(num_cpus), "--include-dashboard", "false"]
        args += ["--temp-dir", self.temp_dir]
        if system_config:
            args += ["--system-config", json.dumps(system_config)]
        self.head = self.start_node(args, head=True)
        self.address = f"127.0.0.1:{port}"

    def add_worker(self, num_cpus: int = 1) -> Node:
        node = self.start_node(["--address", self.address, "--num-cpus", str(num_cpus)], head=False)
        self.workers.append(node)
        return node

    def stop_worker(self, node: Node, kill: bool = False) -> None:
        node.stop(kill)
        if node in self.workers:
            self.workers.remove(node)

    def stop(self) -> None:
        """Stop every node started here, workers first."""
        for node in list(self.workers):
            self.stop_worker(node)
        if self.head is not None:
            self.head.stop()
            self.head = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m py4cc.tests.ray_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker nodes, one CPU each (2)")
    parser.add_argument("--temp-dir", default=None, help="Ray's temp directory (its logs); default: a new one")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    cluster = RayCluster(args.temp_dir)
    # A SIGTERM (a CI timeout, say) must stop the cluster too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        started = time.monotonic()
        cluster.start_head()
        for _ in range(args.workers):
            cluster.add_worker()
        print(
            f"ray_cluster: head at {cluster.address} and {args.workers} worker nodes up in "
            f"{time.monotonic() - started:.1f} s; logs under {cluster.temp_dir}",
            flush=True,
        )
        env = dict(os.environ, **{ADDRESS_VARIABLE: cluster.address})
        return subprocess.call(command, env=env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
