"""The option table is the one place an option is declared: the parser, the
config file's keys, the help's key list and the defaults come from it, and
README's usage block and the man pages are checked against it here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.repo import REPO
from tuninetd.supervisor.config import configfile, configure, options
from tuninetd.supervisor.errors import UsageError


def readme_usage() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Usage\n\n```\n", 1)[1].split("```", 1)[0]


def test_readme_usage_lines_are_the_helps() -> None:
    """The bracketed options of README's usage, in order, are the parser's."""
    def brackets(text: str) -> list[str]:
        return re.findall(r"\[(--[\w-]+(?: [\w:<>|-]+)?)\]", text.split("tuninetd status")[0])

    assert brackets(readme_usage()) == brackets(options.USAGE)
    assert len(brackets(options.USAGE)) == sum(
        1 for o in options.OPTIONS if o.flags and o.flags[-1].startswith("--"))


@pytest.mark.parametrize("option", [o for o in options.OPTIONS if o.flags],
                         ids=lambda o: o.flag)
def test_readme_describes_every_option(option: options.Option) -> None:
    described = [line.split(": ", 1)[0] for line in readme_usage().splitlines()
                 if line.startswith("-")]
    spelled = f"{option.flag} {option.metavar}" if option.metavar else option.flag
    assert spelled in described, f"README's usage has no line for {spelled}"


def test_command_line_only_options_are_no_keys() -> None:
    assert "config" not in configfile.KEYS and "check_config" not in configfile.KEYS


def test_help_key_list_names_every_key() -> None:
    listed = re.findall(r"[a-z_]+", options.EPILOG.split("--config file:", 1)[1]
                        .split("plus start_command", 1)[0])
    assert listed == [o.key for o in options.OPTIONS if o.in_file and o.flags]


def test_parser_defaults_come_from_the_table() -> None:
    """What the command line leaves out is None, so the file's value or the
    table's default shows through."""
    ns = vars(options.parser().parse_args([]))
    assert set(ns) == {o.key for o in options.OPTIONS if o.flags}
    assert all(v is None for v in ns.values())
    assert options.DEFAULTS["ttl"] == 600 and "(default 600)" in options.parser().format_help()


@pytest.mark.parametrize(("key", "long"), [("i", "interfaces"), ("c", "command"),
                                           ("t", "ttl"), ("-w", "pcap_file"),
                                           ("exec-user", "exec_user"), ("a", "ack_only")])
def test_a_flag_written_as_key_names_the_long_key(tmp_path: Path, key: str, long: str) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(f'"{key}" = 1\n')
    with pytest.raises(UsageError) as exc:
        configfile.load(str(conf))
    assert f"unknown key {key!r} (did you mean {long!r}?" in str(exc.value)


@pytest.mark.parametrize("ttl", ["0", "10m", "-5", "1.5", "abc", "315360001"])
def test_every_bad_ttl_gets_one_wording(ttl: str) -> None:
    with pytest.raises(UsageError) as exc:
        configure.parse(["-n", "1", "-c", "/bin/true", "-t", ttl])
    assert str(exc.value) == (f"-t {ttl!r}: expected a whole number of seconds "
                              "from 1 to 315360000")


def test_bash_completion_offers_every_flag() -> None:
    """The installed package's test completes for real; this one catches a
    new option in the ordinary run."""
    text = (REPO / "conf" / "bash-completion" / "tuninetd").read_text()
    offered = set(re.findall(r"(?<![\w-])(-[\w-]+)", text.split('if [[ $cur == -* ]]', 2)[2]
                             .split("elif", 1)[0]))
    flags = {f for o in options.OPTIONS for f in o.flags}
    assert flags - offered == set()
