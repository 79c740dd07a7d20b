"""The command line with bad input (issue 11, items 3-9 and 13): one line, no traceback, and
exit codes as documented in `ficus --help` -- 0 done, 1 the work failed, 2 usage or refused."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from router import simulate
from router.cli import build_parser
from router.embedded_nats import EmbeddedNats
from tests.conftest import ServiceFactory, make_config

REPO = Path(__file__).resolve().parent.parent


def ficus(*args: str, timeout: float = 60, cwd: Path = REPO,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this tree, any cwd
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *prefixes: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr starting with `ficus:` or a config path."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(("ficus:", *prefixes)), lines[0]
    return lines[0]


# --- the subcommands, read from the parser itself so that new ones are covered ----------------

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(parser: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command (path of subcommand names) with its parser, parents before children."""
    parser = parser or build_parser()
    yield path, parser
    for name, child in _subparsers(parser).items():
        yield from commands(child, (*path, name))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _required(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.required and not isinstance(a, argparse._SubParsersAction)]


GOOD = {"since": "2026-11-25T08:00:00Z", "mode": "legacy", "id": "1"}


def good_args(parser: argparse.ArgumentParser, sample: Path, out_dir: Path) -> list[str]:
    """Plausible values for every required argument, so that what a case breaks is what fails."""
    args: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or not (action.required or action.nargs == "+"):
            continue
        if action.dest == "files":
            value = str(sample)
        elif action.dest == "dir":
            value = str(out_dir)
        else:
            value = GOOD.get(action.dest, "his-adt")
        args += [action.option_strings[0], value] if action.option_strings else [value]
    return args


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(what, argv) for every command: unknown option, missing arguments, bad values."""
    sample = tmp / "sample.hl7"
    sample.write_bytes(simulate.adt(1))
    cp1252 = tmp / "cp1252.toml"
    cp1252.write_bytes(b'[[interfaces]]\nname = "his-adt"\ndescription = "Montr\xe9al feed"\n')
    dead_api = f"http://127.0.0.1:{free_port()}"
    out: list[tuple[str, list[str]]] = [("no command", [])]
    for path, parser in commands():
        if not path:
            continue
        sub = _subparsers(parser)
        name = " ".join(path)
        out.append((f"{name} --no-such-option", [*path, "--no-such-option"]))
        if _required(parser) or (sub and not parser._defaults.get("func")) or any(
                a.required for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            out.append((f"{name} without its arguments", list(path)))
        if sub:
            continue
        good = good_args(parser, sample, tmp / "schemas")
        options = _options(parser)
        if "--config" in options:
            out.append((f"{name} -c DIRECTORY", [*path, *good, "-c", str(tmp)]))
            out.append((f"{name} -c WINDOWS-1252", [*path, *good, "-c", str(cp1252)]))
            out.append((f"{name} -c MISSING", [*path, *good, "-c", str(tmp / "missing.toml")]))
        if "--api" in options:
            out.append((f"{name} --api not-a-url", [*path, *good, "--api", "not-a-url"]))
            out.append((f"{name} --api NOBODY", [*path, *good, "--api", dead_api]))
        for action in parser._actions:
            if action.type is not None and action.option_strings and action.dest != "config":
                out.append((f"{name} {action.option_strings[0]} bad", [*path, *good, action.option_strings[0],
                                                                        "yesterday"]))
    out += [
        ("schemas export /dev/null/x", ["schemas", "export", "/dev/null/x"]),
        ("translate --interface without -c", ["translate", "--interface", "his-adt", str(sample)]),
        ("translate --format csv without -c", ["translate", "--format", "csv", str(sample)]),
        ("routes set bad mode", ["routes", "set", "his-adt", "sideways", "--reason", "x", "--api", dead_api]),
    ]
    return out


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path, _ in commands()}
    assert {"run", "demo", "check", "translate", "schemas export", "routes", "routes set", "routes history",
            "dlq list", "dlq show", "dlq replay", "replay"} <= names


SHARDS = 4
"""The cases are split in this many tests, each running its share three processes at a time:
one process per case (a Python start each) made a single test of minutes on a busy machine."""


@pytest.mark.parametrize("shard", range(SHARDS))
def test_every_command_with_bad_arguments_exits_2_with_one_line(tmp_path: Path, shard: int) -> None:
    (tmp_path / "cwd").mkdir()  # no ./ficus.toml there: `run` without -c is a usage error too
    mine = cases(tmp_path)[shard::SHARDS]

    def check(case: tuple[str, list[str]]) -> str | None:
        what, argv = case
        result = ficus(*argv, cwd=tmp_path / "cwd")
        try:
            assert_one_line_usage_error(result, str(tmp_path))
        except AssertionError:
            tail = result.stderr.strip().splitlines()[-2:]
            return f"ficus {' '.join(argv)}  [{what}]: exit {result.returncode}, stderr ends {tail}"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(check, mine) if f is not None]
    assert mine and not failures, "\n\n".join(failures)


def test_a_directory_as_config_says_so(tmp_path: Path) -> None:
    line = assert_one_line_usage_error(ficus("check", "-c", str(tmp_path)), str(tmp_path))
    assert line.startswith(f"{tmp_path}: ") and "directory" in line


def test_a_windows_1252_config_names_the_byte_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "ficus.toml"
    conf.write_bytes(b'# feeds\n[[interfaces]]\nname = "his-adt"\ndescription = "Montr\xe9al feed"\n')
    line = assert_one_line_usage_error(ficus("check", "-c", str(conf)), str(conf))
    assert line.startswith(f"{conf}: ")
    assert "0xe9" in line and "line 4" in line and "UTF-8" in line, line
    assert "Montr" not in line, "no value quoted"


def test_translate_an_unknown_interface_names_the_known_ones(tmp_path: Path) -> None:
    sample = tmp_path / "a.hl7"
    sample.write_bytes(simulate.adt(1))
    example = REPO / "router/examples/ficus.toml"
    line = assert_one_line_usage_error(ficus("translate", "-c", str(example), "--interface", "nope", str(sample)))
    assert "nope" in line and "his-charges" in line, line


def test_api_not_a_url_says_what_is_expected() -> None:
    line = assert_one_line_usage_error(ficus("routes", "--api", "not-a-url"))
    assert "--api" in line and "http://" in line, line


def test_schemas_export_into_a_non_directory_names_the_path() -> None:
    line = assert_one_line_usage_error(ficus("schemas", "export", "/dev/null/x"))
    assert "/dev/null/x" in line, line


def test_since_yesterday_names_since() -> None:
    line = assert_one_line_usage_error(ficus("replay", "his-adt", "--since", "yesterday", "--api",
                                             f"http://127.0.0.1:{free_port()}"))
    assert "--since" in line and "ISO 8601" in line, line


# --- help ------------------------------------------------------------------------------------

def test_every_option_has_help_and_the_top_help_points_at_the_readme() -> None:
    missing = []
    for path, parser in commands():
        for action in parser._actions:
            if not action.help and not isinstance(action, argparse._SubParsersAction):
                missing.append(f"ficus {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"ficus {' '.join(path)} {choice.dest}")
    assert not missing, missing
    result = ficus("--help")
    assert result.returncode == 0
    assert "PRODUCT.md" not in result.stdout
    assert "README" in result.stdout
    assert "exit" in result.stdout.lower() and "0" in result.stdout and "usage or refused" in result.stdout


# --- item 4: offline dead letters keep the control id ----------------------------------------

@pytest.mark.parametrize(("name", "control_id"), [("DFT-P11-01.hl7", "MSG00001"), ("ADT-A40-01.hl7", "8919-40")])
def test_translate_dead_letters_carry_msh10(corpus: Path, name: str, control_id: str) -> None:
    result = ficus("translate", str(corpus / "hl7/msfhirconv" / name))
    assert result.returncode == 1
    (letter,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert letter["control_id"] == control_id, letter
    assert letter["error"] == "UnsupportedMessageError"


def test_translate_a_file_that_is_not_hl7_keeps_control_id_null(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(b"MSH|^~\\&|A|B|C|D|20260101||\r")  # no MSH-9
    result = ficus("translate", "--format", "hl7v2", str(bad))
    assert result.returncode == 1
    (letter,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert letter["control_id"] is None and letter["error"] == "NotHl7Error"


# --- item 5: a format that cannot be detected ------------------------------------------------

def test_translate_a_csv_without_config_says_the_format_was_not_detected(tmp_path: Path) -> None:
    csv = tmp_path / "billing_export.csv"
    csv.write_text("account,code,amount\n1001,99213,125.00\n")
    good = tmp_path / "good.hl7"
    good.write_bytes(simulate.adt(3))
    result = ficus("translate", str(csv), str(good))
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1, "the HL7 file still translates"
    (letter,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert letter["file"] == str(csv)
    assert letter.get("error") != "NotHl7Error" and "does not start with an MSH" not in letter["reason"]
    assert "not detected" in letter["reason"]
    assert "--format csv" in letter["reason"] and "--interface" in letter["reason"] and "-c" in letter["reason"]


def test_translate_detects_hl7_with_a_bom_and_batches(tmp_path: Path) -> None:
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"\xef\xbb\xbfFHS|^~\\&|A\rBHS|^~\\&|A\r" + simulate.adt(4) + b"BTS|1\rFTS|1\r")
    result = ficus("translate", str(batch))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


# --- items 6 and 7: env: errors, ODBC query checks, counts -----------------------------------

ODBC = """
[[interfaces]]
name = "materials-usage"
kind = "odbc"
connection_string = "{dsn}"
query = "{query}"
table = "usage"
key_column = "id"
[interfaces.mapping]
target = "supply_usage"
fields = [{{ field = "item_id", column = "item_id" }}, {{ field = "quantity", column = "qty" }},
          {{ field = "unit_of_measure", column = "uom" }}, {{ field = "unit_cost", column = "unit_cost" }},
          {{ field = "department", column = "dept" }},
          {{ field = "used_at", column = "used_at", type = "datetime" }}]
"""


def _odbc_config(tmp_path: Path, *, dsn: str = "DSN=mm", query: str = "SELECT * FROM usage", top: str = "") -> Path:
    conf = tmp_path / "ficus.toml"
    conf.write_text(top + ODBC.format(dsn=dsn, query=query))
    return conf


def _problems(result: subprocess.CompletedProcess[str], conf: Path) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"{conf}: ") for line in lines), lines
    return [line.removeprefix(f"{conf}: ") for line in lines]


def test_an_unset_variable_is_one_problem_not_two(tmp_path: Path) -> None:
    conf = _odbc_config(tmp_path, dsn="env:FICUS_TEST_UNSET_DSN",
                        top='[api]\ntokens = { operator = "env:FICUS_TEST_UNSET_TOKEN" }\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FICUS_TEST_UNSET")}
    result = ficus("check", "-c", str(conf), env=env)
    assert result.returncode == 1
    problems = _problems(result, conf)
    token = [p for p in problems if p.startswith("api.tokens.operator")]
    assert token == ["api.tokens.operator: environment variable FICUS_TEST_UNSET_TOKEN is not set"], problems
    dsn = [p for p in problems if "connection_string" in p]
    assert dsn == ["interfaces[materials-usage].connection_string: environment variable FICUS_TEST_UNSET_DSN "
                   "is not set"], problems
    assert not [p for p in problems if "interfaces[0]" in p], problems


def test_env_without_a_name_says_so(tmp_path: Path) -> None:
    conf = _odbc_config(tmp_path, top='[api]\ntokens = { operator = "env:" }\n')
    result = ficus("check", "-c", str(conf))
    assert result.returncode == 1
    (problem,) = _problems(result, conf)
    assert problem.startswith("api.tokens.operator: ") and "env:NAME" in problem and "  " not in problem, problem


@pytest.mark.parametrize("query", ["SELECT * FROM usage ORDER BY id", "select * from usage limit 10",
                                   "SELECT * FROM usage\\nORDER\\tBY id",
                                   "SELECT * FROM usage FETCH FIRST 5 ROWS ONLY"])
def test_check_refuses_an_odbc_query_with_order_by_or_limit(tmp_path: Path, query: str) -> None:
    conf = _odbc_config(tmp_path, query=query)
    result = ficus("check", "-c", str(conf))
    assert result.returncode == 1, result.stdout
    (problem,) = _problems(result, conf)
    assert problem.startswith("interfaces[materials-usage].query: "), problem
    assert "ORDER BY" in problem and "LIMIT" in problem, problem


@pytest.mark.parametrize("query", ["SELECT * FROM usage WHERE note <> 'order by' AND credit_limit > 0",
                                   "SELECT * FROM (SELECT * FROM usage ORDER BY id) AS u"])
def test_check_accepts_order_by_only_where_it_is_not_the_querys(tmp_path: Path, query: str) -> None:
    result = ficus("check", "-c", str(_odbc_config(tmp_path, query=query)))
    assert result.returncode == 0, result.stderr


def test_check_counts_interfaces_in_english(tmp_path: Path) -> None:
    result = ficus("check", "-c", str(_odbc_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "(1 interface: materials-usage" in result.stdout, result.stdout
    empty = tmp_path / "empty.toml"
    empty.write_text('state_dir = "/tmp/x"\n')
    result = ficus("check", "-c", str(empty))
    assert "interfaces: )" not in result.stdout
    assert result.returncode == 0
    assert f"{empty}: WARNING: no interfaces" in result.stderr, result.stderr


# --- items 8, 9 and 13 against a running service ---------------------------------------------

async def test_exit_codes_history_and_listings_against_a_service(
    nats_server: EmbeddedNats, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    from legacy.simulated_engine import SimulatedEngine

    async with SimulatedEngine() as engine:
        cfg = make_config(nats_server.url, [{"name": "his-adt", "mapping": "hl7v2.adt", "route": "shadow",
                                             "legacy": f"mllp://127.0.0.1:{engine.port}"}],
                          state_dir=tmp_path / "state")
        async with service_factory(cfg) as svc:
            api = svc.api_url or ""

            async def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return await asyncio.to_thread(ficus, *args, "--api", api)

            # item 8: not found and refused are 2, like a usage error.
            for argv in (["dlq", "replay", "99"], ["dlq", "show", "99"],
                         ["routes", "set", "nope", "legacy", "--reason", "x"],
                         ["routes", "history", "nope"], ["replay", "nope", "--since", "2026-01-01T00:00:00Z"]):
                result = await cli(*argv)
                line = assert_one_line_usage_error(result)
                assert "99" in line or "nope" in line, line

            # item 13: headers, and an empty list says so.
            listing = await cli("routes")
            assert listing.returncode == 0, listing.stderr
            header, *rows = listing.stdout.splitlines()
            assert header.split()[:2] == ["INTERFACE", "MODE"], header
            assert len(rows) == 1 and rows[0].split()[:2] == ["his-adt", "shadow"], rows
            letters = await cli("dlq", "list")
            assert letters.returncode == 0, letters.stderr
            assert letters.stdout.strip() == "no dead letters", letters.stdout
            letters = await cli("dlq", "list", "his-adt")
            assert letters.stdout.strip() == "no dead letters for his-adt", letters.stdout

            # item 9: a facility override and its undo, printed and audited readably.
            canary = await cli("routes", "set", "his-adt", "legacy", "--facility", "NORTH", "--reason", "hold north")
            assert canary.returncode == 0, canary.stderr
            assert canary.stdout.strip() == "his-adt: now shadow (facilities: NORTH=legacy)", canary.stdout
            undo = await cli("routes", "set", "his-adt", "shadow", "--facility", "NORTH", "--reason", "undo")
            assert undo.returncode == 0, undo.stderr
            assert undo.stdout.strip() == "his-adt: now shadow", undo.stdout
            history = await cli("routes", "history", "his-adt")
            assert history.returncode == 0, history.stderr
            flips = [line.split(" by ")[0].split(" ", 1)[1] for line in history.stdout.splitlines()]
            assert flips == ["shadow -> legacy facility NORTH", "legacy -> shadow facility NORTH"], flips
