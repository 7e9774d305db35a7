"""Run a PRIVATE Postfix instance for end-to-end tests, wired as vxgate's deployment is.

``PostfixInstance(workdir, inbound_port=..., filter_addr=..., reinject_port=..., relay_to=...)``
writes its own main.cf/master.cf into ``workdir/etc`` (config_directory) and keeps its queue
(``workdir/queue``) and log (``workdir/maillog``, Postfix 3.4+ ``maillog_file``; there is no
syslog) under ``workdir``; every command runs as ``postfix -c workdir/etc``, so the system's
default instance (/etc/postfix, /var/spool/postfix) is neither read for settings nor touched
and may be running or not; as root no ``alternate_config_directories`` entry is needed.  Only
the data_directory lives elsewhere, in a fresh ``$TMPDIR/vxgate-postfix-data/<name>-*``
removed by ``stop()``: the master opens ``data_directory/master.lock`` by absolute path as the
``postfix`` user, which cannot traverse pytest's 0700 ``/tmp/pytest-of-root`` (the queue is
reached relative to a chdir done as root, so it may stay there).  The wiring follows
/work/shared/reference/postfix.md, "SMTP mode wiring": an inbound smtpd on
127.0.0.1:inbound_port with ``content_filter = scan:[filter]:port`` and
``receive_override_options = no_address_mappings``, the ``scan`` smtp transport with XFORWARD,
a re-injection smtpd on 127.0.0.1:reinject_port with an empty content_filter, and everything
else relayed to ``relayhost = [relay_to]`` with no DNS; ``filter_addr=None`` makes a plain
relay, and ``bcc=`` adds ``always_bcc`` plus a transport map for the BCC domain (applied at
re-injection when a filter is configured).  All chroot columns are ``n``.  Postfix daemonises,
and where PID 1 does not reap (containers) its exited processes would stay zombies, so the
master is started under a tiny Python reaper (PR_SET_CHILD_SUBREAPER) that collects every
process of the instance and exits when the last one is gone: ``stop()`` waits for it and leaves
nothing behind.  Needs root and the Debian ``postfix`` package (``.ci/install-postfix.sh``).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import pty
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

__all__ = [
    "PostfixInstance",
    "PostfixError",
    "QueuedMessage",
    "free_port",
    "postfix_available",
    "postfix_skip_reason",
]

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
DATA_BASE_NAME = "vxgate-postfix-data"

# Runs "postfix -c DIR start" as a child subreaper: the daemonised master and all its
# children get re-parented to this process instead of PID 1, which reaps them, so no
# zombies remain even where PID 1 is not an init.  Prints "@@RC <code>" once the start
# command finished and exits when the last Postfix process of the instance has exited.
_REAPER = r"""
import ctypes, os, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    ok = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
except Exception:
    ok = False
if not ok:
    sys.stdout.write("@@NOREAPER\n")
rc = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
sys.stdout.write("@@RC %d\n" % rc)
sys.stdout.flush()
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
"""

_used_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a currently unused TCP port, never the same one twice in this process."""
    with _ports_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _used_ports:
                _used_ports.add(port)
                return port
    raise RuntimeError("no free port found")


def _find_postfix() -> Optional[str]:
    found = shutil.which("postfix")
    if found:
        return found
    for d in SBIN_DIRS:
        candidate = os.path.join(d, "postfix")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def postfix_skip_reason() -> Optional[str]:
    """None when a private instance can run here, else why not (for ``pytest.skip``)."""
    if _find_postfix() is None:
        return "postfix binary not installed (run .ci/install-postfix.sh)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' system user"
    return None


def postfix_available() -> bool:
    return postfix_skip_reason() is None


class PostfixError(RuntimeError):
    """A postfix command failed; the message carries its output and the log tail."""


@dataclasses.dataclass
class QueuedMessage:
    """One entry of ``postqueue -j``."""

    queue_id: str
    queue_name: str  # incoming, active, deferred, hold, maildrop (= status)
    sender: str
    recipients: list[dict]  # {"address": ..., "delay_reason": ...(optional)}
    arrival_time: int = 0
    message_size: int = 0
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def status(self) -> str:
        return self.queue_name

    @property
    def delay_reasons(self) -> list[str]:
        return [r["delay_reason"] for r in self.recipients if r.get("delay_reason")]

    @property
    def addresses(self) -> list[str]:
        return [r["address"] for r in self.recipients]


_running: "set[PostfixInstance]" = set()  # strong refs: stopped at exit even if leaked


@atexit.register
def _stop_all() -> None:
    for inst in list(_running):
        try:
            inst.stop()
        except Exception:
            pass


_instance_counter = 0


def _next_name() -> str:
    global _instance_counter
    _instance_counter += 1
    return f"vxpf{os.getpid()}n{_instance_counter}"


def _bracket(addr: Sequence) -> str:
    host, port = addr[0], int(addr[1])
    return f"[{host}]:{port}"


class PostfixInstance:
    """A private Postfix instance under ``workdir``; see the module docstring.

    Parameters
    ----------
    workdir: directory for etc/, queue/ and maillog (created when missing); the data
        directory is a fresh temporary one (see the module docstring), ``.data_dir``.
    inbound_port: port of the inbound smtpd on 127.0.0.1 (what clients submit to).
    filter_addr: (host, port) of the after-queue content filter, or None for a plain relay.
    reinject_port: port of the re-injection smtpd (required with a filter, optional without).
    relay_to: (host, port) of the next hop; all mail goes there via ``relayhost``.
    bcc: {"always_bcc": address, "bcc_socket": (host, port)} for BCC mode, or None.
    name: syslog_name / instance name (unique default); appears in every log line.
    main_cf: extra main.cf settings applied last (e.g. {"smtp_data_done_timeout": "30s"}).
    master_cf_extra: extra master.cf text appended verbatim.
    filter_process_limit: process limit of the ``scan`` transport (postfix.md: 10).
    """

    def __init__(
        self,
        workdir: os.PathLike | str,
        *,
        inbound_port: int,
        filter_addr: Optional[Sequence] = None,
        reinject_port: Optional[int] = None,
        relay_to: Sequence,
        bcc: Optional[Mapping] = None,
        name: Optional[str] = None,
        main_cf: Optional[Mapping[str, object]] = None,
        master_cf_extra: str = "",
        filter_process_limit: int = 10,
    ) -> None:
        if filter_addr is not None and reinject_port is None:
            raise ValueError("filter_addr needs a reinject_port for the filter to relay to")
        if bcc is not None and ("always_bcc" not in bcc or "bcc_socket" not in bcc):
            raise ValueError('bcc must be {"always_bcc": addr, "bcc_socket": (host, port)}')
        self.workdir = Path(workdir).absolute()
        self.inbound_port = int(inbound_port)
        self.filter_addr = tuple(filter_addr) if filter_addr is not None else None
        self.reinject_port = int(reinject_port) if reinject_port is not None else None
        self.relay_to = tuple(relay_to)
        self.bcc = dict(bcc) if bcc is not None else None
        self.name = name or _next_name()
        self.extra_main_cf = dict(main_cf or {})
        self.master_cf_extra = master_cf_extra
        self.filter_process_limit = int(filter_process_limit)
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "queue"
        self.data_dir: Optional[Path] = None  # created by start(), removed by stop()
        self.maillog = self.workdir / "maillog"
        self._postfix = _find_postfix() or "postfix"
        sbin = os.path.dirname(self._postfix)
        self._postqueue = os.path.join(sbin, "postqueue")
        self._postconf = os.path.join(sbin, "postconf")
        self._postsuper = os.path.join(sbin, "postsuper")
        self._reaper: Optional[subprocess.Popen] = None

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostfixInstance {self.name} {state} inbound={self.inbound_port} dir={self.workdir}>"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env["MAIL_CONFIG"] = str(self.config_dir)
        env["LANG"] = "C"
        env["PATH"] = env.get("PATH", "") + ":" + ":".join(SBIN_DIRS)
        return env

    def _run(self, args: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Postfix command; its stderr goes to a pty because Postfix commands only
        write their messages to stderr when it is a terminal (else to syslog/maillog)."""
        master_fd, slave_fd = pty.openpty()
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave_fd,
                env=self._env(), cwd="/", preexec_fn=_postfix_umask,
            )
        finally:
            os.close(slave_fd)
        chunks: list[bytes] = []

        def reader() -> None:
            while True:
                try:
                    chunk = os.read(master_fd, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                chunks.append(chunk)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        t.join(2)
        try:
            os.close(master_fd)
        except OSError:
            pass
        err = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
        res = subprocess.CompletedProcess(args, proc.returncode, out.decode("utf-8", "replace"), err)
        if check and res.returncode != 0:
            raise PostfixError(
                f"{' '.join(args)} exited {res.returncode}\nstderr: {err.strip()}\n"
                f"stdout: {res.stdout.strip()}\n--- {self.maillog} (tail) ---\n{self.log_tail()}"
            )
        return res

    def log_text(self) -> str:
        """The instance's whole maillog_file ('' before the first start)."""
        try:
            return self.maillog.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _make_data_dir(self) -> Path:
        """A fresh data_directory the postfix user can reach (see module docstring)."""
        base = Path(tempfile.gettempdir()) / DATA_BASE_NAME
        try:
            base.mkdir(mode=0o711, exist_ok=True)
            st = os.lstat(base)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(f"{base} is not a directory owned by us")
            if stat.S_IMODE(st.st_mode) != 0o711:
                os.chmod(base, 0o711)
        except OSError:
            base = Path(tempfile.mkdtemp(prefix=DATA_BASE_NAME + "-"))
            os.chmod(base, 0o711)
        data = Path(tempfile.mkdtemp(prefix=self.name + "-", dir=base))
        pw = pwd.getpwnam("postfix")
        os.chown(data, pw.pw_uid, pw.pw_gid)  # master opens master.lock here as "postfix"
        os.chmod(data, 0o700)
        return data

    def _remove_data_dir(self) -> None:
        data, self.data_dir = self.data_dir, None
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)

    # ------------------------------------------------------------------ configuration
    def main_cf_settings(self) -> dict[str, str]:
        """The main.cf settings this instance is written with (in order)."""
        relay = _bracket(self.relay_to)
        meta_dir = "/etc/postfix"
        s: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "meta_directory": meta_dir,  # postfix-files, dynamicmaps.cf of the package
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.workdir),  # default only allows /var, /dev/stdout
            "syslog_name": self.name,
            "myhostname": f"{self.name}.vxgate.test",
            "mydomain": "vxgate.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": relay,
            "default_transport": "smtp",
            "relay_transport": "relay",
            # no DNS anywhere: IP literals and /etc/hosts only
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtpd_tls_security_level": "",
            "smtp_tls_security_level": "",
            "smtp_connect_timeout": "5s",
            # short retry times so deferred mail comes back quickly in tests
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "transport_retry_time": "1s",
            "delay_warning_time": "0",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_banner": "$myhostname ESMTP $mail_name (vxgate test instance)",
            "content_filter": "",
            "receive_override_options": "",
            "always_bcc": "",
            "transport_maps": "",
        }
        if self.filter_addr is not None:
            s["content_filter"] = "scan:" + _bracket(self.filter_addr)
            s["receive_override_options"] = "no_address_mappings"
        if self.bcc is not None:
            domain = str(self.bcc["always_bcc"]).rpartition("@")[2]
            s["always_bcc"] = str(self.bcc["always_bcc"])
            s["transport_maps"] = "inline:{ { %s = smtp:%s } }" % (domain, _bracket(self.bcc["bcc_socket"]))
        for key, value in self.extra_main_cf.items():
            s[key] = "" if value is None else str(value)
        return s

    def master_cf_text(self) -> str:
        n = self.name
        lines = [
            f"# master.cf of the private test instance {n}, written by tests/support/postfix.py",
            "# chroot column is 'n' everywhere: the queue is private, there is no chroot copy.",
            "# service type  private unpriv  chroot  wakeup  maxproc command + args",
            f"127.0.0.1:{self.inbound_port} inet n - n - - smtpd",
            f"  -o syslog_name={n}/inbound",
        ]
        if self.reinject_port is not None:
            lines += [
                f"127.0.0.1:{self.reinject_port} inet n - n - - smtpd",
                f"  -o syslog_name={n}/reinject",
                "  -o content_filter=",
                "  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters",
                "  -o smtpd_helo_restrictions=",
                "  -o smtpd_client_restrictions=",
                "  -o smtpd_sender_restrictions=",
                "  -o smtpd_relay_restrictions=",
                "  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
                "  -o mynetworks=127.0.0.0/8",
                "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8",
            ]
        if self.filter_addr is not None:
            lines += [
                f"scan      unix  -       -       n       -       {self.filter_process_limit}      smtp",
                f"  -o syslog_name={n}/scan",
                "  -o smtp_send_xforward_command=yes",
                "  -o disable_mime_output_conversion=yes",
                "  -o smtp_generic_maps=",
            ]
        lines += [
            "pickup    unix  n       -       n       60      1       pickup",
            "cleanup   unix  n       -       n       -       0       cleanup",
            "qmgr      unix  n       -       n       300     1       qmgr",
            "rewrite   unix  -       -       n       -       -       trivial-rewrite",
            "bounce    unix  -       -       n       -       0       bounce",
            "defer     unix  -       -       n       -       0       bounce",
            "trace     unix  -       -       n       -       0       bounce",
            "verify    unix  -       -       n       -       1       verify",
            "flush     unix  n       -       n       1000?   0       flush",
            "proxymap  unix  -       -       n       -       -       proxymap",
            "proxywrite unix -       -       n       -       1       proxymap",
            "smtp      unix  -       -       n       -       -       smtp",
            "relay     unix  -       -       n       -       -       smtp",
            "showq     unix  n       -       n       -       -       showq",
            "error     unix  -       -       n       -       -       error",
            "retry     unix  -       -       n       -       -       error",
            "discard   unix  -       -       n       -       -       discard",
            "lmtp      unix  -       -       n       -       -       lmtp",
            "anvil     unix  -       -       n       -       1       anvil",
            "scache    unix  -       -       n       -       1       scache",
            "postlog   unix-dgram n  -       n       -       1       postlogd",
        ]
        text = "\n".join(lines) + "\n"
        if self.master_cf_extra:
            text += self.master_cf_extra.rstrip("\n") + "\n"
        return text

    def postconf(self, settings: Mapping[str, object], *, reload: bool = True) -> None:
        """Change main.cf settings with ``postconf -c DIR -e``; reload when running."""
        args = [self._postconf, "-c", str(self.config_dir), "-e"]
        args += [f"{k}={'' if v is None else v}" for k, v in settings.items()]
        self._run(args)
        self.extra_main_cf.update({k: v for k, v in settings.items()})
        if reload and self.running:
            self.reload()

    def write_config(self) -> None:
        # vxgate's code in this process may have set umask 0077 (it keeps its own files private);
        # Postfix's daemons, which are not root, must enter the queue folders made from here
        os.umask(0o022)
        for d in (self.workdir, self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.data_dir is None:
            self.data_dir = self._make_data_dir()
        os.chmod(self.workdir, 0o755)
        os.chmod(self.config_dir, 0o755)
        main_cf = self.config_dir / "main.cf"
        main_cf.write_text(f"# main.cf of the private test instance {self.name}, set with postconf -e\n")
        (self.config_dir / "master.cf").write_text(self.master_cf_text())
        settings = self.main_cf_settings()
        self._run([self._postconf, "-c", str(self.config_dir), "-e",
                   *[f"{k}={v}" for k, v in settings.items()]])

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._reaper is not None and self._reaper.poll() is None and self._master_alive()

    def _master_alive(self) -> bool:
        pidfile = self.queue_dir / "pid" / "master.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return self._is_ours(pid)

    def _is_ours(self, pid: int) -> bool:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"MAIL_CONFIG={self.config_dir}".encode() in env.split(b"\0")

    def pids(self) -> list[int]:
        """PIDs of live processes belonging to this instance (by MAIL_CONFIG)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and self._is_ours(int(entry)):
                found.append(int(entry))
        return found

    def start(self, timeout: float = 30) -> "PostfixInstance":
        """Write the configuration, check it and start the master under the reaper;
        returns once the inbound (and re-injection) smtpd answer."""
        if self.running:
            return self
        reason = postfix_skip_reason()
        if reason:
            raise PostfixError(reason)
        try:
            self.write_config()
            self._run([self._postfix, "-c", str(self.config_dir), "check"])
            self._start_master(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_master(self, timeout: float) -> None:
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, self._postfix, "-c", str(self.config_dir), "start"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self._env(), cwd="/", start_new_session=True, preexec_fn=_postfix_umask,
        )
        self._reaper = reaper
        _running.add(self)
        rc = None
        deadline = time.monotonic() + timeout
        assert reaper.stdout is not None
        while time.monotonic() < deadline:
            line = reaper.stdout.readline().decode(errors="replace")
            if not line:
                break
            if line.startswith("@@RC "):
                rc = int(line.split()[1])
                break
        reaper.stdout.close()
        if rc != 0:
            raise PostfixError(
                f"postfix -c {self.config_dir} start failed (rc={rc})\n"
                f"--- {self.maillog} (tail) ---\n{self.log_tail()}"
            )
        self._wait_listening(timeout=max(1.0, deadline - time.monotonic()))

    def _wait_listening(self, timeout: float) -> None:
        ports = [self.inbound_port] + ([self.reinject_port] if self.reinject_port else [])
        deadline = time.monotonic() + timeout
        for port in ports:
            while True:
                try:
                    with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.test", timeout=5) as c:
                        c.noop()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise PostfixError(f"{self.name}: port {port} not answering\n{self.log_tail()}")
                    time.sleep(0.05)

    def reload(self) -> None:
        self._run([self._postfix, "-c", str(self.config_dir), "reload"])

    def stop(self, timeout: float = 20) -> None:
        """Stop the instance and wait until none of its processes is left."""
        _running.discard(self)
        if self._reaper is not None:
            if self._master_alive():
                self._run([self._postfix, "-c", str(self.config_dir), "stop"], check=False, timeout=timeout)
            self._reap(timeout=timeout)
        self._remove_data_dir()

    def _reap(self, timeout: float) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        try:
            reaper.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if self._master_alive():
                self._run([self._postfix, "-c", str(self.config_dir), "abort"], check=False, timeout=10)
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()
        leftovers = self.pids()
        for pid in leftovers:  # only if the reaper could not be a subreaper
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "PostfixInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queue
    def flush(self) -> None:
        """``postqueue -f``: retry all deferred mail now (also un-throttles dead destinations)."""
        self._run([self._postqueue, "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[QueuedMessage]:
        """The queue as ``postqueue -j`` reports it (the master must be running)."""
        res = self._run([self._postqueue, "-c", str(self.config_dir), "-j"])
        out = []
        for line in res.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            out.append(QueuedMessage(
                queue_id=d.get("queue_id", ""),
                queue_name=d.get("queue_name", ""),
                sender=d.get("sender", ""),
                recipients=list(d.get("recipients", [])),
                arrival_time=int(d.get("arrival_time", 0)),
                message_size=int(d.get("message_size", 0)),
                raw=d,
            ))
        return out

    def wait_queue_empty(self, timeout: float = 15) -> None:
        """Wait until the queue is empty; TimeoutError (with queue and log tail) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: queue not empty after {timeout}s: {q}\n{self.log_tail()}")
            time.sleep(0.2)

    def wait_queue(self, predicate, timeout: float = 15) -> list[QueuedMessage]:
        """Wait until ``predicate(queue())`` is true; return that queue listing."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if predicate(q):
                return q
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: queue condition not met after {timeout}s: {q}\n{self.log_tail()}")
            time.sleep(0.2)

    def delete_all(self) -> None:
        """``postsuper -d ALL``: drop every queued message."""
        self._run([self._postsuper, "-c", str(self.config_dir), "-d", "ALL"])

    # ------------------------------------------------------------------ sending
    def send(
        self,
        mail_from: str,
        rcpt_tos: Iterable[str] | str,
        data: bytes | str,
        *,
        port: Optional[int] = None,
        helo: str = "client.test",
        timeout: float = 30,
    ) -> str:
        """Submit one message with smtplib to the inbound port (or ``port``); return the
        Postfix queue id from the final 250 reply.  ``data`` bytes are sent as they are
        (smtplib dot-stuffs but does not touch line endings of bytes)."""
        if isinstance(rcpt_tos, str):
            rcpt_tos = [rcpt_tos]
        with smtplib.SMTP("127.0.0.1", port or self.inbound_port, local_hostname=helo, timeout=timeout) as c:
            c.ehlo()
            code, resp = c.mail(mail_from)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, resp, mail_from)
            for rcpt in rcpt_tos:
                code, resp = c.rcpt(rcpt)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, resp)})
            code, resp = c.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, resp)
        text = resp.decode("utf-8", "replace")
        return text.rsplit("queued as ", 1)[-1].strip() if "queued as" in text else text


def _postfix_umask():
    """Postfix's commands create queue folders its unprivileged daemons must enter."""
    os.umask(0o022)
