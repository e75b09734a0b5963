"""The command line itself: one line per mistake whatever the flag, --verbose adds only a traceback, text printed as
written, and lines that stay whole in a log."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from maskrt.cli.main import main as maskrt
from maskrt.cli.main import trt_convert


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert maskrt(["--version"]) == 0
    assert capsys.readouterr().out == f"maskrt {version('maskrt')}\n"
    assert trt_convert(["--version"]) == 0
    assert capsys.readouterr().out == f"maskrt {version('maskrt')}\n"


def test_trt_convert_calls_itself_trt_convert(capsys: pytest.CaptureFixture[str]) -> None:
    assert trt_convert(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: trt-convert ")
    assert trt_convert(["model.onnx", "--precision", "fp8"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("trt-convert: error: argument --precision: invalid choice: 'fp8'"), line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "maskrt: error: the following arguments are required: <verb> (see maskrt --help)"),
        (["export"], "maskrt export: error: the following arguments are required: -o/--output"),
        (["lint", "a.onnx", "--colour"], "maskrt lint: error: unrecognized arguments: --colour"),
        (["lint", "a.onnx", "--target", "trt9"], "maskrt lint: error: argument --target: invalid choice: 'trt9'"),
        (["shapes", "-o", "val", "--count", "many"], "maskrt shapes: error: argument --count: expected a whole number"),
        (["plugins"], "maskrt plugins: error: the following arguments are required: <action>"),
    ],
)
def test_a_mistyped_command_line_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert maskrt(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(expected), line
    assert not captured.out


def test_verbose_adds_the_traceback_and_keeps_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.onnx"
    assert maskrt(["lint", str(missing)]) == 2
    [quiet] = capsys.readouterr().err.strip().splitlines()
    assert maskrt(["lint", str(missing), "--verbose"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and f"maskrt.contracts.errors.BadInput: {missing}: file not found" in lines
    assert lines[-1] == quiet == f"maskrt lint: error: {missing}: file not found"


def test_user_text_prints_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Square brackets are rich markup to a console that reads markup: a path with them must come out whole."""
    odd = tmp_path / "[bold]model[/bold] [tensorrt].onnx"
    assert maskrt(["lint", str(odd)]) == 2
    assert capsys.readouterr().err.strip() == f"maskrt lint: error: {odd}: file not found"


def test_a_log_gets_whole_lines_and_the_progress(tmp_path: Path) -> None:
    """stderr redirected to a file, as under CI or nohup: no line is wrapped at 80 columns, progress is plain lines."""
    deep = tmp_path / ("a folder with a name long enough to wrap " * 3).strip()
    deep.mkdir()
    output, log = deep / "val", tmp_path / "log.txt"
    command = [sys.executable, "-m", "maskrt.cli", "shapes", "--count", "2", "--size", "32", "-o", str(output)]
    with log.open("w") as stderr:
        assert subprocess.run(command, stderr=stderr, timeout=120).returncode == 0
        assert subprocess.run([*command[:3], "lint", str(deep / "x.onnx")], stderr=stderr, timeout=120).returncode == 2
    lines = log.read_text().splitlines()
    assert len(str(output)) > 120
    assert any(line.startswith("shapes: 2/2 images in ") for line in lines), lines
    assert any(line.startswith(f"{output}: 2 images, ") for line in lines), lines
    assert lines[-1] == f"maskrt lint: error: {deep / 'x.onnx'}: file not found"
    assert all("\x1b" not in line for line in lines), "no colour codes in a log"


@pytest.mark.parametrize("failure", [ZeroDivisionError("division by zero"), ValueError("operands could not be broadcast")])
def test_an_internal_error_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """A failure below the command line that is not the user's (a NumPy ValueError included) reads as maskrt's own
    defect, never as a bad input; --verbose adds the traceback."""
    from maskrt.calib import shapes

    def broken(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(shapes, "write_dataset", broken)
    argv = ["shapes", "--count", "1", "-o", str(tmp_path / "shapes")]
    assert maskrt(argv) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("maskrt shapes: error: internal error (") and str(failure) in line, line
    assert "please report it" in line and "Traceback" not in line
    assert maskrt([*argv, "--verbose"]) == 1
    assert capsys.readouterr().err.startswith("Traceback (most recent call last):")


def test_a_user_error_below_the_command_line_is_still_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.onnx"
    empty.touch()
    assert maskrt(["lint", str(empty)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"maskrt lint: error: {empty}: empty file, not an ONNX model", line
