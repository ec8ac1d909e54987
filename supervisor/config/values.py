"""One value checked and typed: as the command line gives it (text) or a
config file does (TOML's types). Nothing here looks at the system; the
message of a refusal names the option and the value."""

from __future__ import annotations

from tuninetd.supervisor.config.settings import SensorSpec
from tuninetd.supervisor.errors import UsageError

MAX_TTL = 10 * 365 * 86400
MAX_TIMEOUT = 7 * 86400
MAX_START_PACKETS = 1_000_000


def whole_seconds(option: str, given: str | int, maximum: int) -> int:
    try:
        value = given if isinstance(given, int) else int(given, 10)
    except ValueError:
        value = 0
    if not 0 < value <= maximum:
        raise UsageError(f"{option} {str(given)!r}: expected a whole number of seconds "
                         f"from 1 to {maximum}")
    return value


def whole(option: str, given: str | int, minimum: int, maximum: int, unit: str) -> int:
    try:
        value = given if isinstance(given, int) else int(given, 10)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise UsageError(f"{option} {str(given)!r}: expected a whole number of {unit} "
                         f"from {minimum} to {maximum}")
    return value


def seconds(option: str, given: str | float, minimum: float, maximum: float,
            zero_ok: bool) -> float:
    try:
        value = float(given)
    except ValueError:
        value = float("nan")
    if value != value or not (minimum <= value <= maximum or (zero_ok and value == 0)):
        lo = "0 (never) or " if zero_ok else ""
        raise UsageError(f"{option} {str(given)!r}: expected {lo}seconds "
                         f"from {minimum:g} to {maximum:g}")
    return value


def queue(option: str, given: str | int) -> int:
    try:
        number = given if isinstance(given, int) else int(given, 10)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UsageError(f"{option} {str(given)!r}: expected an NFQUEUE number from 0 to 65535")
    return number


def choice(option: str, given: str, allowed: tuple[str, ...]) -> str:
    if given not in allowed:
        raise UsageError(f"{option} {given!r}: expected {' or '.join(allowed)}")
    return given


def group_number(option: str, given: str | int) -> int:
    try:
        group = given if isinstance(given, int) else int(given, 10)
    except ValueError:
        group = -1
    if not 0 <= group <= 65535:
        raise UsageError(f"{option} {str(given)!r}: expected an NFLOG group number "
                         "from 0 to 65535")
    return group


def group(given: str | int, option: str = "-n") -> SensorSpec:
    number = group_number(option, given)
    return SensorSpec("nflog", str(number), group=number)
