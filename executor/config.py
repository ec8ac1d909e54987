"""The executor's configuration, the first record the supervisor sends."""

from __future__ import annotations

import os

from tuninetd.common import wire


class Config:
    # A plain class: a NamedTuple would bring typing into the executor.
    __slots__ = ("beat", "first_run", "gid", "name", "timeout", "uid", "user")

    def __init__(self, timeout: float, beat: float, uid: int | None = None,
                 gid: int | None = None, user: str | None = None, name: str = "",
                 first_run: int = 1) -> None:
        self.timeout = timeout  # seconds a command may run; 0 means no limit
        self.beat = beat
        self.uid = uid
        self.gid = gid
        self.user = user
        self.name = name  # the daemon's, for the process title
        self.first_run = first_run  # the id of the first run the supervisor hands over


def _number(msg: wire.Message, name: str) -> float:
    value = msg.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config: {name} must be a number")
    return float(value)


def _optional_int(msg: wire.Message, name: str) -> int | None:
    value = msg.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config: {name} must be an integer or null")
    return value


def _optional_str(msg: wire.Message, name: str) -> str | None:
    value = msg.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"config: {name} must be a string or null")
    return value


def parse_config(msg: wire.Message) -> Config:
    if msg.get("t") != "config":
        raise ValueError(f"expected config first, got {wire.clean_text(str(msg.get('t')))}")
    config = Config(
        timeout=_number(msg, "timeout"),
        beat=_number(msg, "beat"),
        uid=_optional_int(msg, "uid"),
        gid=_optional_int(msg, "gid"),
        user=_optional_str(msg, "user"),
        name=_optional_str(msg, "name") or "",
        first_run=_optional_int(msg, "first_run") or 1,
    )
    if config.timeout < 0 or config.beat <= 0:
        raise ValueError("config: timeout must be >= 0 and beat > 0")
    if config.uid is not None and config.gid is None:
        raise ValueError("config: uid without gid")
    return config


def switch_user(config: Config) -> None:
    """Run commands as the configured user.

    Unlike the sensors, no_new_privs stays off and the bounding set is kept:
    a start script may legitimately need sudo to bring an interface up.
    """
    uid, gid = config.uid, config.gid
    if uid is None or gid is None:
        return
    if config.user is not None:
        os.initgroups(config.user, gid)
    else:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not become uid {uid} gid {gid}")
