"""Checks that look at the system: accounts, executables and folders,
interfaces, name resolution, the optional metrics extra, filter compilation.
Each takes a value already typed and says what is wrong in one line."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import sys
from dataclasses import replace

from tuninetd.common import ifname
from tuninetd.supervisor import pcapfile
from tuninetd.supervisor.config import bpf, ownership, runnable
from tuninetd.supervisor.config.settings import Account, Program, SensorSpec
from tuninetd.supervisor.errors import UsageError

SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


def account(option: str, name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"{option} {name!r}: no such user on this system") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid)


def command(text: str | None, option: str = "-c", exec_user: Account | None = None) -> str:
    """An executable that only root (or ``exec_user``, who runs it) can change."""
    if text is None:
        raise UsageError("-c <path> is required: the executable to run with start and stop")
    if not text:
        raise UsageError(f"{option} '': expected the path of an executable, got an empty string")
    path = os.path.abspath(text)
    try:
        st = os.stat(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        if len(text.split()) > 1 and option in ("-c", "command"):
            # The original ran -c through a shell; this one runs the path itself.
            reason += ("; -c takes one executable path, run as PATH start and PATH stop: "
                       "for arguments use start_command and stop_command in the config file")
        raise UsageError(f"{option} {text!r}: {reason}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{option} {text!r}: is a directory, expected an executable file")
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise UsageError(f"{option} {text!r}: not executable (chmod +x it)")
    owners = frozenset({0} if exec_user is None else {0, exec_user.uid})
    try:
        problem = ownership.file_problem(path, owners)
    except OSError as exc:
        problem = f"cannot check who may change it ({exc.strerror or exc})"
    if problem:
        who = "root" if exec_user is None else f"root or {exec_user.name}"
        raise UsageError(f"{option} {text!r}: {problem}; only {who} may be able to change "
                         "a command or a directory on its path")
    if problem := runnable.problem(path, exec_user):
        raise UsageError(f"{option} {text!r}: {problem}")
    return path


def config_file(text: str, option: str = "--config") -> None:
    """A configuration file that only root (or whoever runs the check, for a
    --check-config of one's own file) can change: it names what root runs."""
    owners = frozenset({0, os.geteuid()})
    try:
        problem = ownership.file_problem(os.path.abspath(text), owners)
    except OSError as exc:
        raise UsageError(f"{option} {text!r}: {(exc.strerror or str(exc)).lower()}") from None
    if problem:
        raise UsageError(f"{option} {text!r}: {problem}; only root may be able to change "
                         "the configuration or a directory on its path")


def argv(option: str, words: tuple[str, ...], exec_user: Account | None) -> tuple[str, ...]:
    """start_command / stop_command: the program is looked up in PATH now, once."""
    program = words[0]
    if program and "/" not in program:
        found = shutil.which(program)
        if found is None:
            raise UsageError(f"{option} {program!r}: not found in PATH ({os.environ.get('PATH')})")
        program = found
    return (command(program, option, exec_user), *words[1:])


def socket_path(option: str, text: str) -> str:
    path = os.path.abspath(text)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise UsageError(f"{option} {text!r}: too long for a unix socket path "
                         f"(at most {SUN_PATH_MAX} bytes)")
    path = file_path(option, text)
    if problem := ownership.root_folder_problem(path):
        raise UsageError(f"{option} {text!r}: {problem}: another user could take the "
                         "socket's name first; use a folder only root can write")
    return path


def file_path(option: str, text: str) -> str:
    """A file the daemon creates (control socket, pidfile): its directory must exist."""
    if not text:
        raise UsageError(f"{option} '': expected a file path, got an empty string")
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise UsageError(f"{option} {text!r}: is a directory, expected a file path")
    if not os.path.isdir(os.path.dirname(path)):
        raise UsageError(f"{option} {text!r}: directory {os.path.dirname(path)} does not exist")
    return path


def metrics(option: str, text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text, 10)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= 65535:
        raise UsageError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9101 "
                         "or [::1]:9101")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"{option} {text!r}: cannot resolve {host!r} ({exc})") from None
    if problem := metrics_library_problem():
        raise UsageError(f"{option} {text!r}: {problem}")
    return host, port


METRICS_LIBRARY_OLDEST = (0, 16)  # Debian bookworm's python3-prometheus-client


def metrics_library_problem() -> str | None:
    """What is wrong with prometheus-client, the optional library --metrics
    needs, and what to install for the way tuninetd itself is installed."""
    from importlib import metadata

    try:
        import prometheus_client  # noqa: F401 - checked now, used once the daemon runs
    except ImportError:
        return f"prometheus-client is not installed: {_metrics_install()}"
    try:
        version = metadata.version("prometheus_client")
    except metadata.PackageNotFoundError:
        return None  # importable without metadata (a vendored copy): trust it
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found[1]), int(found[2])) < METRICS_LIBRARY_OLDEST:
        oldest = ".".join(map(str, METRICS_LIBRARY_OLDEST))
        return (f"prometheus-client {version} is too old (at least {oldest}): "
                f"{_metrics_install()}")
    return None


def _metrics_install() -> str:
    """The command that installs prometheus-client beside this tuninetd."""
    if __file__.startswith("/usr/lib/python3/dist-packages/"):
        return "apt-get install python3-prometheus-client"
    pip = f"{sys.prefix}/bin/pip" if sys.prefix != sys.base_prefix else "pip"
    return f"{pip} install 'prometheus-client>=0.16' (the metrics extra)"


def interface(name: str, option: str = "-i", wait: bool = False) -> SensorSpec:
    """With ``wait`` a missing interface is a sensor waiting for it (link "")."""
    if ifname.problem(name) is not None:
        raise UsageError(f"{option} {name!r}: not a valid interface name "
                         f"(1 to {ifname.IFNAMSIZ - 1} bytes, no '/', ':' or spaces)")
    link = bpf.link_of(name)
    if link is None and not wait:
        raise UsageError(f"{option} {name!r}: no such network interface (see: ip link; "
                         "--wait-for-interface waits for it)")
    return SensorSpec("pcap", name, link=link or "")


def with_filters(specs: list[SensorSpec], flt: str | None, keep: str | None,
                 option: str = "-f", keep_option: str = "--keep-filter") -> list[SensorSpec]:
    """Every pcap sensor gets its programs, compiled all at once: the filter's
    and, with ``keep`` (the keep-alive expression: --keep-filter's, or -a's
    ACK test), that one's. One that waits for its interface gets them for
    each link type it may turn out to have (known when it appears); the
    filters must suit one of them."""
    expressions = [(flt or "", option, flt)]
    if keep is not None:
        expressions.append((keep, keep_option, keep))
    try:
        compiled = bpf.compile_filters(
            (e, link) for s in specs for link in ([s.link] if s.link else bpf.LINKS)
            for e, _option, _given in expressions)
    except bpf.CompilerError as exc:
        raise UsageError(f"cannot compile the packet filters of the -i sensors: {exc} "
                         "(check that libpcap is installed and works: Debian's libpcap0.8)"
                         ) from None

    def programs(spec: SensorSpec, link: str) -> tuple[str, Program, Program | None]:
        out: list[Program] = []
        for expression, shown_as, given in expressions:
            result = compiled[(expression, link)]
            if isinstance(result, bpf.FilterError):
                raise UsageError(f"{shown_as} {given!r}: {result} "
                                 f"(on {spec.name}, link type {link})")
            out.append(result)
        return link, out[0], out[1] if keep is not None else None

    out = []
    for spec in specs:
        if spec.link:
            _, prog, keep_prog = programs(spec, spec.link)
            out.append(replace(spec, bpf=prog, bpf_keep=keep_prog))
            continue
        candidates, refusals = [], []
        for link in bpf.LINKS:
            try:
                candidates.append(programs(spec, link))
            except UsageError as exc:
                refusals.append(exc)
        if not candidates:
            raise refusals[0]
        out.append(replace(spec, candidates=tuple(candidates)))
    return out


def pcap_file(text: str, option: str = "-w") -> str:
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise UsageError(f"{option} {text!r}: is a directory, expected a file path")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {text!r}: directory {folder} does not exist or is not writable")
    if problem := ownership.root_folder_problem(path):
        raise UsageError(f"{option} {text!r}: {problem}: another user could put a symlink "
                         "at its name; use a folder only root can write")
    try:
        pcapfile.check_existing(path)
    except OSError as exc:
        raise UsageError(f"{option} {text!r}: {exc.strerror or exc}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {text!r}: file is not writable")
    return path
