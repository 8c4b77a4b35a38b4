"""``tagi serve`` refuses unsafe or impossible setups with one error line, before loading anything."""

from __future__ import annotations

import pytest

from tagi.cli import main as cli_main
from tagi.commands.serve import ServeError, check_bind, is_loopback, resolve_checkpoint


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_non_loopback_bind_without_token_is_refused(host, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TAGI_SERVE_TOKEN", raising=False)
    with pytest.raises(ServeError, match="without a token"):
        check_bind(host, None)
    check_bind(host, "t0ken")  # with a token it may bind
    assert cli_main(["serve", "--host", host, "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to serve on")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host):
    assert is_loopback(host)
    check_bind(host, None)


def test_missing_demo_checkpoint_names_tagi_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ServeError, match="tagi demo"):
        resolve_checkpoint(None)
    assert cli_main(["serve"]) == 2
    assert "run 'tagi demo' first" in capsys.readouterr().err
    assert str(resolve_checkpoint("some/dir")) == "some/dir"


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert cli_main(["serve", "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint not found" in err[0]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-batch", "0", "--max-batch must be >= 1, got 0"),
        ("--max-queue", "0", "--max-queue must be >= 1, got 0"),
        ("--join-min-rows", "0", "--join-min-rows must be >= 1, got 0"),
        ("--join-max-steps", "-1", "--join-max-steps must be >= 0, got -1"),
        ("--prefix-cache-mb", "-5", "--prefix-cache-mb must be >= 0, got -5"),
        ("--timeout", "0", "--timeout must be > 0, got 0.0"),
    ],
)
def test_impossible_numbers_are_one_error_line_before_loading(tmp_path, capsys, flag, value, message):
    # the checkpoint does not exist either: the number is refused first, before anything is looked up
    assert cli_main(["serve", "--checkpoint", str(tmp_path / "nope"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


def test_prefill_takes_one_of_its_choices(tmp_path, capsys):
    """A ``Literal`` parameter is an argparse choice: another value is refused by the parser (exit 2)."""
    with pytest.raises(SystemExit) as e:
        cli_main(["serve", "--checkpoint", str(tmp_path / "nope"), "--prefill", "chunked"])
    assert e.value.code == 2
    assert "argument --prefill: invalid choice: 'chunked'" in capsys.readouterr().err
    assert cli_main(["serve", "--checkpoint", str(tmp_path / "nope"), "--prefill", "packed"]) == 2  # accepted
    assert "checkpoint not found" in capsys.readouterr().err
