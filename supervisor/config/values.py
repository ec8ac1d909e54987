"""One value checked and typed: as the command line gives it (text) or a
config file does (TOML's types). Nothing here looks at the system; the
message of a refusal names the option and the value."""

from __future__ import annotations

from tuninetd.supervisor.config.settings import SensorSpec
from tuninetd.supervisor.errors import UsageError

MAX_TTL = 10 * 365 * 86400
MAX_TIMEOUT = 7 * 86400
MAX_START_PACKETS = 1_000_000


def _integer(given: str | int) -> int | None:
    if isinstance(given, int):
        return given
    try:
        return int(given, 10)
    except ValueError:
        return None


def whole(option: str, given: str | int, minimum: int, maximum: int, unit: str) -> int:
    value = _integer(given)
    if value is None or not minimum <= value <= maximum:
        raise UsageError(f"{option} {str(given)!r}: expected a whole number of {unit} "
                         f"from {minimum} to {maximum}")
    return value


def whole_seconds(option: str, given: str | int, maximum: int) -> int:
    return whole(option, given, 1, maximum, "seconds")


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


def _number16(option: str, given: str | int, what: str) -> int:
    """An NFQUEUE or NFLOG group number: 16 bits."""
    value = _integer(given)
    if value is None or not 0 <= value <= 65535:
        raise UsageError(f"{option} {str(given)!r}: expected {what} from 0 to 65535")
    return value


def queue(option: str, given: str | int) -> int:
    return _number16(option, given, "an NFQUEUE number")


def choice(option: str, given: str, allowed: tuple[str, ...]) -> str:
    if given not in allowed:
        raise UsageError(f"{option} {given!r}: expected {' or '.join(allowed)}")
    return given


def group_number(option: str, given: str | int) -> int:
    return _number16(option, given, "an NFLOG group number")


def group(given: str | int, option: str = "-n") -> SensorSpec:
    number = group_number(option, given)
    return SensorSpec("nflog", str(number), group=number)
