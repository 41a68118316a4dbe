"""Every error of every operator command group is JSON on stdout with a non-zero exit: click's
usage errors (missing argument, unknown option or command, bad choice or range, a missing
command), file errors and unexpected failures, as well as the domain's problems."""
from __future__ import annotations

import json

import click
import pytest
from sqlalchemy.exc import OperationalError

from coalition.cli import JsonGroup
from partners import service as partner_service

FLASK_OWN = {"run", "shell", "routes"}  # Flask's own commands, no groups


def invoke(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.stdout)


def groups(app) -> dict[str, click.Group]:
    ctx = click.Context(app.cli)
    return {name: app.cli.get_command(ctx, name) for name in app.cli.list_commands(ctx)
            if name not in FLASK_OWN}


def test_every_group_of_ours_answers_errors_as_json(app):
    found = groups(app)
    assert {"partners", "members", "settlement", "ledger", "audit", "demo", "db", "openapi"} <= set(found)
    assert {name for name, group in found.items() if not isinstance(group, JsonGroup)} == set()


def test_a_group_without_a_command_or_with_an_unknown_one(app, runner):
    for name, group in groups(app).items():
        code, error = invoke(runner, name)
        assert (code, error["error"], error["detail"]) == (2, "usage-error", "Missing command."), name
        assert error["commands"] == sorted(group.commands)
        code, error = invoke(runner, name, "no-such-command")
        assert (code, error["error"]) == (2, "usage-error"), name
        assert error["detail"] == "No such command 'no-such-command'."
        assert invoke(runner, name, "--no-such-option")[0] == 2


def test_every_command_refuses_an_unknown_option_and_missing_arguments_as_json(app, runner):
    for name, group in groups(app).items():
        for command_name, command in group.commands.items():
            code, error = invoke(runner, name, command_name, "--no-such-option")
            assert (code, error["error"]) == (2, "usage-error"), (name, command_name)
            assert error["detail"] == "No such option '--no-such-option'."
            assert f" {name} {command_name} [OPTIONS]" in error["usage"]
            required = [p for p in command.params if p.required]
            if required:
                code, error = invoke(runner, name, command_name)
                assert (code, error["error"]) == (2, "usage-error"), (name, command_name)
                assert error["detail"].startswith(("Missing argument", "Missing option"))


@pytest.mark.parametrize("args, detail", [
    (("partners", "add", "shop"), "Missing option '--name'."),
    (("partners", "add", "shop", "--name"), "Option '--name' requires an argument."),
    (("settlement", "show", "2026-05", "--format", "xml"),
     "Invalid value for '--format': 'xml' is not one of 'json', 'csv', 'pdf'."),
    (("audit", "list", "--limit", "0"), "Invalid value for '--limit': 0 is not in the range 1<=x<=10000."),
    (("members", "show", "M1", "--limit", "many"), "Invalid value for '--limit': 'many' is not a valid integer range."),
    (("ledger", "seal", "--every", "-1"), "Invalid value for '--every': a positive number of seconds"),
    (("ledger", "seal", "--max-runs", "2"), "--max-runs needs --every."),
    (("ledger", "verify", "--anchors", "/no/such/anchors.jsonl"),
     "Invalid value for '--anchors': '/no/such/anchors.jsonl': No such file or directory"),
    (("partners", "add-key", "shop", "--public-key", "/no/such/key.pem"),
     "Invalid value for '--public-key': File '/no/such/key.pem' does not exist."),
])
def test_usage_errors(runner, args, detail):
    code, error = invoke(runner, *args)
    assert (code, error["error"], error["detail"]) == (2, "usage-error", detail)


def test_a_file_that_cannot_be_opened(runner, tmp_path):
    target = tmp_path / "no-such-dir" / "anchors.jsonl"
    assert invoke(runner, "ledger", "seal", "--anchor-file", str(target)) == (1, {
        "error": "validation-error",
        "detail": f"Could not open file '{target}': No such file or directory"})


def test_help_is_help(runner):
    result = runner.invoke(args=["partners", "set-terms", "--help"])
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ")
    assert " partners set-terms [OPTIONS] PARTNER_ID" in result.stdout


def test_a_crash_is_json_too(app, runner, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(partner_service, "set_status", broken)
    assert invoke(runner, "partners", "add", "shop", "--name", "Shop")[0] == 0
    result = runner.invoke(args=["partners", "suspend", "shop"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": "internal-error", "detail": "The command failed: RuntimeError (details on stderr)."}
    assert "disk on fire" in caplog.text  # the traceback is logged, for the operator
    assert invoke(runner, "partners", "show", "shop")[1]["status"] == "active"


def test_a_database_that_is_away_is_unavailable(app, runner, monkeypatch):
    def away(*_args, **_kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))
    monkeypatch.setattr(partner_service, "list_partners", away)
    assert invoke(runner, "partners", "list") == (1, {
        "error": "unavailable", "detail": "The database is not reachable just now; run the command again."})
