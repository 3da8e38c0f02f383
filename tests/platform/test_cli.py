"""The semtag command as a newcomer meets it: help texts, --version, a closed pipe, library log noise,
and the messages that name CLI flags."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import semtag
from semtag.cli import CLUSTER_METHODS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _semtag(args: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    """``python -m semtag ARGS`` with this checkout's code and a data folder of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEMTAG_DATA_DIR": str(tmp_path / "var")}
    for name in ("SEMTAG_DATABASE_URL", "SEMTAG_BROKER_URL"):
        env.pop(name, None)
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "semtag", *args], env=env, stderr=subprocess.PIPE, text=True,
                          timeout=120, cwd=tmp_path, **kw)



def test_top_level_help_is_for_users_and_lists_common_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "`" not in out and "::" not in out
    assert "scanning electron microscope" in out
    for example in ("semtag scale", "semtag classify", "semtag serve", "semtag train", "semtag models list"):
        assert example in out
    assert 'semtag COMMAND --help' in out


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"semtag {semtag.__version__}"


def test_every_option_of_every_command_has_help_and_no_help_has_backticks() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    assert {"serve", "worker", "db", "scale", "classify", "cluster", "synth", "train", "plot-training", "export",
            "models", "apikey"} <= set(subs)
    assert "`" not in parser.format_help()
    missing = []
    for name, sp in subs.items():
        text = sp.format_help()
        assert "`" not in text, f"semtag {name} --help has a backtick"
        assert sp.description, f"semtag {name} has no description"
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"


def test_defaults_are_shown_in_the_help() -> None:
    subs = _subparsers(build_parser())
    serve = subs["serve"].format_help()
    assert "(default: 1)" in serve  # --workers
    cluster = " ".join(subs["cluster"].format_help().split())
    assert "(default: ward)" in cluster and "(default: 30)" in cluster and "(default: 10)" in cluster
    assert "(default: None)" not in cluster and "(default: False)" not in cluster


def test_cluster_method_choices_are_the_analysis_methods(capsys: pytest.CaptureFixture) -> None:
    from services.clustering.analysis import ALL_METHODS

    assert set(CLUSTER_METHODS) == set(ALL_METHODS)
    (method,) = [a for a in _subparsers(build_parser())["cluster"]._actions if "--method" in a.option_strings]
    assert tuple(method.choices) == CLUSTER_METHODS
    with pytest.raises(SystemExit):
        main(["cluster", "--method", "kmeans"])
    assert "invalid choice" in capsys.readouterr().err


def _write_tiffs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, (rng.random((64, 96)) * 255).astype(np.uint8), description="semtag test")
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(good.read_bytes()[:200])  # header and tags, values cut off: tifffile logs errors
    return good, bad


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    """semtag scale ... | head: the reader is gone before (or while) semtag writes."""
    good, _ = _write_tiffs(tmp_path)
    r, w = os.pipe()
    os.close(r)  # the reader has already gone: the first line written meets a broken pipe
    try:
        for args in (["scale", *[str(good)] * 5], ["scale", "--json", str(good)], ["--help"]):
            proc = _semtag(args, tmp_path, stdout=w)
            assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
            assert proc.stderr == "", proc.stderr
            assert proc.returncode in (0, 141)
    finally:
        os.close(w)


def test_a_reader_that_stops_after_one_line(tmp_path: Path) -> None:
    good, _ = _write_tiffs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEMTAG_DATA_DIR": str(tmp_path / "var")}
    proc = subprocess.Popen([sys.executable, "-m", "semtag", "scale", *[str(good)] * 200], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(str(good))
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) in (0, 141)
    assert "Traceback" not in err, err


def test_library_log_messages_do_not_reach_the_user(tmp_path: Path) -> None:
    good, bad = _write_tiffs(tmp_path)
    proc = _semtag(["scale", str(bad), str(good)], tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith(f"semtag scale: {bad}: cannot be read: ") for line in lines), lines
    assert proc.stdout.startswith(str(good))
    # -v shows them, labelled
    verbose = _semtag(["scale", "-v", str(bad)], tmp_path).stderr.splitlines()
    assert any(line.startswith("semtag: tifffile: ") for line in verbose), verbose
    assert all(line.startswith("semtag") for line in verbose), verbose


def test_cluster_empty_selection_names_the_cli_flag(cli_env: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from semtag.settings import get_settings
    from services import migrate
    from services.db import session_scope
    from services.tables import ModelVersion

    url = get_settings().effective_database_url
    migrate.upgrade(url)
    with session_scope(url) as s:  # an active model, no classified images in the 1–2 µm range
        s.add(ModelVersion(version="m1", architecture="alexnet", file_path=str(tmp_path / "m.onnx"),
                           file_sha256="0" * 64, active=True))
    assert main(["cluster", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--all-scales" in err and "scale_min_nm" in err
