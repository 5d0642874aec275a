"""``make run`` / ``make keep`` hand over cleanly: one stack at a time (a second start refuses and
says how to use or stop the first), and the kept stack's CLI settings in one file to source."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import sandbox.demo.__main__ as demo


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "STATE", tmp_path)
    monkeypatch.setattr(demo, "LOCK", tmp_path / "stack.lock")
    monkeypatch.setattr(demo, "ENV_FILE", tmp_path / "env.sh")
    return tmp_path


def test_a_second_stack_is_refused_while_one_runs_and_allowed_after(state):
    kept = demo.hold_the_stack("keep")
    assert kept is not None and demo.holder()["pid"] == os.getpid() and demo.holder()["mode"] == "keep"
    assert demo.hold_the_stack("run") is None
    kept.close()  # the holder exits: the kernel releases the lock
    again = demo.hold_the_stack("run")
    assert again is not None and demo.holder()["mode"] == "run"
    again.close()


def test_make_run_refuses_clearly_and_leaves_the_kept_stack_alone(state, capsys):
    log = state / "demo.log"
    log.write_text("the kept stack's log\n")
    kept = demo.hold_the_stack("keep")
    try:
        assert demo.main([]) == 2
    finally:
        kept.close()
    err = capsys.readouterr().err
    assert err.startswith("make run: refused: a local stack started by `make keep` is running")
    assert f"kill {os.getpid()}" in err and "-m shared doctor" in err and "env.sh" in err
    assert log.read_text() == "the kept stack's log\n"  # not truncated


def test_the_env_file_sources_in_a_plain_shell(state):
    stack = SimpleNamespace(
        sandbox=SimpleNamespace(url="http://127.0.0.1:7070"),
        host=SimpleNamespace(url="http://127.0.0.1:7071", function_key="fk-1"),
        values={"DATAVERSE_ACCESS_TOKEN": "local-dev-token", "LEDGER_KEY": "k e y",
                "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a/b+c==;"
                                       "TableEndpoint=http://127.0.0.1:4321/devstoreaccount1;"},
        table_prefix="demo1234abcd")
    path = demo.write_env_file(stack)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    out = subprocess.run(["bash", "-c", f". {path} && echo \"$DATAVERSE_URL|$TABLE_PREFIX|$LEDGER_KEY|"
                                        f"$AzureWebJobsStorage|$STRADDLE_LOCAL_HOST|$STRADDLE_FUNCTION_KEY\""],
                         capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    assert out.strip() == ("http://127.0.0.1:7070|demo1234abcd|k e y|" + stack.values["AzureWebJobsStorage"]
                           + "|http://127.0.0.1:7071|fk-1")


def test_the_hint_runs_the_venv_python_without_activating_it():
    cmd = demo.python_command()
    path = Path(cmd) if Path(cmd).is_absolute() else demo.REPO / cmd
    assert path.name.startswith("python") and path.exists()
    done = subprocess.run([cmd, "-m", "shared", "--version"], cwd=demo.REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})  # no venv on PATH
    assert done.returncode == 0 and done.stdout.startswith("straddle ")
