"""Run a real Flower 1.42 deployment (SuperLink + SuperNodes as subprocesses) on 127.0.0.1 with TLS
and SuperNode authentication, for tests and measurements.

Everything lives in one temp directory: a throwaway CA and server certificate (``cryptography``),
one P-384 SuperNode auth key per node (Flower's node auth takes NIST EC keys in OpenSSH format, not
our Ed25519 identity keys), ``FLWR_HOME`` with a ``config.toml`` naming the connection, and a tiny
Flower App whose ServerApp writes a JSON artifact (``flwr run`` exits 0 even when the ServerApp
fails, so the artifact is the only trustworthy result). Every process is started in its own
session and stopped by pid and process group in :meth:`FlowerCluster.stop`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BIN = Path(sys.executable).parent
CONN = "sfl-test"
FEDERATION = "5a" * 32  # stands in for a manifest digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 / localhost (P-256, valid one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securefl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
           .issuer_name(ca_name).public_key(srv_key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5))
           .not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pki = Pki(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(srv.public_bytes(pem))
    pki.server_key.write_bytes(srv_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pki.server_key.chmod(0o600)
    return pki


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-384 SuperNode auth key pair in OpenSSH format (private 0600, public ``.pub``)."""
    key = ec.generate_private_key(ec.SECP384R1())
    priv = directory / f"{name}.key"
    pub = directory / f"{name}.key.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return priv, pub


SERVER_APP = '''
"""Probe ServerApp: echo payloads through every node, then detect a killed node."""
import hashlib, json, os, time
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

CFG = json.loads(open(os.environ.get("SFL_PROBE_CFG", "__CFG__")).read())
app = ServerApp()


def _write(obj):
    tmp = CFG["artifact"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, CFG["artifact"])


def _round(grid, node_ids, payload, timeout):
    arr = Array(np.frombuffer(payload, dtype=np.uint8))
    msgs = [Message(RecordDict({"p": ArrayRecord({"b": arr})}), dst_node_id=n,
                    message_type="query") for n in node_ids]
    t0 = time.monotonic()
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    elapsed = time.monotonic() - t0
    ok, info = {}, {}
    digest = hashlib.sha256(payload).hexdigest()
    for r in replies:
        src = r.metadata.src_node_id
        if r.has_error():
            ok[str(src)] = "error: " + str(r.error.reason)[:200]
            continue
        back = r.content["p"]["b"].numpy().tobytes()
        ok[str(src)] = hashlib.sha256(back).hexdigest() == digest
        info[str(src)] = dict(r.content["m"])
    return elapsed, ok, info


@app.main()
def main(grid: Grid, context: Context) -> None:
    out = {"started": time.time(), "rounds": [], "status": "running"}
    try:
        t0 = time.monotonic()
        while True:
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= CFG["nodes"] or time.monotonic() - t0 > 60:
                break
            time.sleep(0.5)
        out["wait_nodes_s"] = time.monotonic() - t0
        out["node_ids"] = node_ids
        try:
            out["node_names"] = {str(n.node_id): n.name for n in grid.get_nodes()}
        except Exception as exc:  # report, do not hide
            out["node_names_error"] = repr(exc)
        for size in CFG["sizes"]:
            payload = os.urandom(size)
            el, ok, info = _round(grid, node_ids, payload, CFG["timeout"])
            out["rounds"].append({"bytes": size, "seconds": el, "ok": ok, "info": info})
            _write(out)
        out["node_ids_late"] = sorted(grid.get_node_ids())
        # securefl's draft adapter over the same Grid: two stages, then a stage after the kill
        from securefl.transport.flower import GridLink, StageExchange
        link = GridLink(grid)
        nodes = link.node_names()
        ex = StageExchange(link=link, federation=CFG["federation"], session=bytes(16),
                           server="agg", nodes=nodes, timeout_s=CFG["timeout"])
        out["adapter"] = []
        for stage in ("advertise", "share"):
            sent = {n: (stage + ":" + n).encode() for n in sorted(nodes)}
            t1 = time.monotonic()
            res = ex.exchange(0, stage, sent)
            good = {n: r[:32] == hashlib.sha256(sent[n]).digest() for n, r in res.replies.items()}
            counts = {n: int.from_bytes(r[32:], "big") for n, r in res.replies.items()}
            out["adapter"].append({"stage": stage, "seconds": time.monotonic() - t1,
                                   "good": good, "counts": counts, "dropped": res.dropped})
        _write(out)
        if CFG.get("kill_phase"):
            out["status"] = "waiting-for-kill"
            _write(out)
            t1 = time.monotonic()
            while not os.path.exists(CFG["killed_flag"]) and time.monotonic() - t1 < 120:
                time.sleep(0.2)
            ex.timeout_s = CFG["kill_timeout"]
            t1 = time.monotonic()
            res = ex.exchange(1, "unmask", {n: b"u" for n in sorted(nodes)})
            out["after_kill"] = {"seconds": time.monotonic() - t1,
                                 "replies": sorted(res.replies), "dropped": res.dropped,
                                 "node_ids_now": sorted(grid.get_node_ids())}
        out["status"] = "done"
    except Exception as exc:
        out["status"] = "failed: " + repr(exc)
    out["finished"] = time.time()
    _write(out)
'''

CLIENT_APP = '''
"""Probe ClientApp: echo the payload back with this node's data-path and a per-node counter;
securefl envelopes (message type query.securefl) go through the draft adapter."""
import hashlib
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from securefl.transport.flower import make_client_app

app = ClientApp()


def _stage(env, state):
    n = int.from_bytes(state or bytes(8), "big") + 1
    return hashlib.sha256(env.payload).digest() + n.to_bytes(8, "big"), n.to_bytes(8, "big")


make_client_app(_stage, app=app)


@app.query()
def query(msg: Message, context: Context) -> Message:
    st = context.state.config_records.get("c", ConfigRecord({"n": 0}))
    st["n"] = int(st["n"]) + 1
    context.state.config_records["c"] = st
    meta = ConfigRecord({"data_path": str(context.node_config.get("data-path", "")),
                         "calls": int(st["n"])})
    return Message(RecordDict({"p": msg.content["p"], "m": meta}), reply_to=msg)
'''


def make_app(directory: Path, cfg: dict[str, object]) -> Path:
    """Write the probe Flower App (pyproject + package) and its JSON config; return the app dir."""
    app = directory / "app"
    pkg = app / "sflprobe"
    pkg.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / "probe.json"
    cfg_path.write_text(json.dumps(cfg))
    (pkg / "__init__.py").write_text("")
    (pkg / "server_app.py").write_text(SERVER_APP.replace("__CFG__", str(cfg_path)))
    (pkg / "client_app.py").write_text(CLIENT_APP)
    (app / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "sflprobe"
        version = "1.0.0"
        description = "securefl transport probe"
        license = "Apache-2.0"
        dependencies = ["flwr==1.42.0", "numpy"]

        [tool.hatch.build.targets.wheel]
        packages = ["."]

        [tool.flwr.app]
        publisher = "securefl"

        [tool.flwr.app.components]
        serverapp = "sflprobe.server_app:app"
        clientapp = "sflprobe.client_app:app"
        """))
    return app


@dataclass
class FlowerCluster:
    """SuperLink + SuperNodes on 127.0.0.1 with TLS and node auth; stop() kills all of them."""

    root: Path
    n_nodes: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self.pki = make_pki(self.root / "pki")
        self.home = self.root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        # The interpreter's own bin directory first on PATH: Flower's processes spawn console
        # scripts (flower-superexec, ...) by name, which must resolve without an activated venv.
        path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
        self.env = {**os.environ, "PATH": path, "FLWR_HOME": str(self.home),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "NO_COLOR": "1",
                    "COLUMNS": "200"}

    # --- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start_superlink(self) -> None:
        t0 = time.monotonic()
        self.port = free_port()
        self._spawn("superlink", [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", str(self.pki.ca_cert),
            "--ssl-certfile", str(self.pki.server_cert),
            "--ssl-keyfile", str(self.pki.server_key),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.root / "state.db"),
        ])
        (self.home / "config.toml").write_text(textwrap.dedent(f"""\
            [superlink]
            default = "{CONN}"

            [superlink.{CONN}]
            address = "127.0.0.1:{self.port}"
            root-certificates = "{self.pki.ca_cert}"
            """))
        _wait_port(self.port, 60, self.procs["superlink"], lambda: self.log("superlink"))
        self.timings["superlink_up_s"] = time.monotonic() - t0

    def add_supernode(self, i: int, *, name: str | None = None,
                      node_config: str | None = None) -> None:
        """Register and start SuperNode ``name`` (default inst<i>) with ``node_config`` (default:
        the probe's data-path/member/federation)."""
        t0 = time.monotonic()
        name = name or f"inst{i}"
        priv, pub = make_node_key(self.root / "pki", name)
        reg = self.flwr("supernode", "register", str(pub), CONN, "--name", name)
        if reg.returncode != 0:
            raise RuntimeError(f"register {name} failed: {reg.stdout}\n{reg.stderr}")
        data = self.root / "data" / name
        data.mkdir(parents=True, exist_ok=True)
        if node_config is None:
            node_config = f'data-path="{data}" member="{name}" federation="{FEDERATION}"'
        self._spawn(name, [
            str(BIN / "flower-supernode"),
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.pki.ca_cert),
            "--auth-supernode-private-key", str(priv),
            "--node-config", node_config,
            "--port", str(free_port()),
            "--max-retries", "10",
        ])
        self.timings[f"{name}_register_s"] = time.monotonic() - t0

    def add_unregistered_supernode(self, name: str, root_cert: Path | None = None) -> None:
        """A SuperNode with a key the SuperLink was never told about (and, if ``root_cert`` is
        given, a TLS root that did not sign the SuperLink's certificate)."""
        priv, _ = make_node_key(self.root / "pki", name)
        self._spawn(name, [
            str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(root_cert or self.pki.ca_cert),
            "--auth-supernode-private-key",
            str(priv), "--port", str(free_port()), "--max-retries", "3",
        ])

    def start(self) -> None:
        self.start_superlink()
        for i in range(self.n_nodes):
            self.add_supernode(i)

    def kill(self, name: str) -> None:
        """SIGKILL one process (and its process group: its ClientApp children)."""
        proc = self.procs[name]
        _killpg(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL after 5 s."""
        for proc in self.procs.values():
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        for proc in self.procs.values():  # children that outlived their leader
            _killpg(proc, signal.SIGKILL)


def _killpg(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session=True: pgid == pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes],
               log: object) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log()}")  # type: ignore[operator]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not open after {timeout} s:\n{log()}")  # type: ignore[operator]


def wait_for(path: Path, predicate: object, timeout: float) -> dict[str, object] | None:
    """Poll a JSON file until ``predicate(obj)`` holds; return the object (or None on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                obj = json.loads(path.read_text())
            except json.JSONDecodeError:
                obj = None
            if obj is not None and predicate(obj):  # type: ignore[operator]
                return obj  # type: ignore[no-any-return]
        time.sleep(0.3)
    return None
