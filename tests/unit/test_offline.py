"""Nothing reaches the network unless a download was asked for (RELIABILITY_FINDINGS 8).

Every model-loading command runs on a tiny model with the socket functions replaced by recorders
that refuse: a library that catches the refusal and carries on still fails the test, because the
attempt was recorded. The environment starts as a user's would, without the HF_HUB_OFFLINE that
``tests/conftest.py`` sets, so the variables must come from icon2_lens itself. The PNG export runs
a separate browser process, so it is watched with strace (inside an empty network namespace
when ``unshare -n`` works, so nothing could leave even if the test failed).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icon2_lens import _network
from icon2_lens.cli import main
from icon2_lens.model.load import load_model, resolve_model
from icon2_lens.testing import save_tiny_model

#: What the libraries read; unset at the start of every test, as on a user's machine.
HUB_VARIABLES = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "CI",  # TRL sends no telemetry on CI: unset, so the test sees what a user's machine does
    _network.ALLOW_DOWNLOAD_ENV,
)
INSTRUCTIONS = ["tell me a story", "write a poem about a cat", "explain how to save money"]


@pytest.fixture
def user_env(monkeypatch):
    """A process in which the user set none of the Hub's variables (restored afterwards)."""
    from huggingface_hub import constants

    for name in HUB_VARIABLES:
        monkeypatch.setenv(name, "")  # records the original state, so teardown restores it
        monkeypatch.delenv(name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(_network, "_OURS", {})


@pytest.fixture
def attempts(monkeypatch, user_env):
    """Every network attempt made in this process, each refused (Unix sockets still work)."""
    from huggingface_hub.utils import _telemetry

    seen: list[tuple[str, object]] = []
    real_connect = socket.socket.connect

    def refuse(what: str, target: object):
        seen.append((what, target))
        raise OSError(f"network disabled in this test ({what} {target!r})")

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        return refuse("connect", address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, a: refuse("connect_ex", a))
    monkeypatch.setattr(
        socket, "create_connection", lambda a, *x, **k: refuse("create_connection", a)
    )
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *x, **k: refuse("getaddrinfo", host))
    monkeypatch.setattr(socket, "gethostbyname", lambda host: refuse("gethostbyname", host))
    # the telemetry ping is sent from a daemon thread: record that it was started at all
    monkeypatch.setattr(
        _telemetry, "_start_telemetry_thread", lambda: seen.append(("telemetry thread", None))
    )
    return seen


@pytest.fixture
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_offline"))


def _pairs(path: Path) -> Path:
    records = [
        {
            "prompt": [{"role": "user", "content": text}],
            "chosen": [
                {"role": "assistant", "content": f"i am happy to help , here is answer {k} ."}
            ],
            "rejected": [{"role": "assistant", "content": "no . you are bad and rude ."}],
        }
        for k, text in enumerate(INSTRUCTIONS * 2)  # distinct records (duplicates are refused)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_command_runs_without_opening_a_socket(
    attempts, model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ins.txt").write_text("\n".join(INSTRUCTIONS) + "\n", encoding="utf-8")
    (tmp_path / "ins.jsonl").write_text(
        "".join(json.dumps({"instruction": t}) + "\n" for t in INSTRUCTIONS), encoding="utf-8"
    )
    common = ["--model", str(model_dir), "--no-progress", "--no-png"]
    commands = {
        "extract": ["--criteria", "honesty", "--n-instructions", "4", "--n-heldout", "2"]
        + ["--n-wording", "2", "--out", "ex"],
        "synthesize": ["--n", "4", "--batch-size", "4", "--max-new-tokens", "6"]
        + ["--out", "syn/instructions.jsonl"],
        "filter": ["--instructions", "ins.txt", "--directions", "ex", "--fraction", "1.0"]
        + ["--out", "flt"],
        "pairs": ["--kept", "flt/kept.jsonl", "--directions", "ex", "--layers", "0-2"]
        + [
            "--gamma-pos",
            "2.0",
            "--gamma-neg",
            "-2.0",
            "--allow-any-gamma",
            "--max-new-tokens",
            "6",
        ]
        + ["--no-surface-gate", "--out", "pr"],
        "dpo": ["--pairs", str(_pairs(tmp_path / "dpo_pairs.jsonl")), "--max-steps", "1"]
        + ["--batch-size", "2", "--max-length", "64", "--out", "dpo"],
        "eval": ["--system", "trained=model:dpo/model", "--instructions", "ins.jsonl"]
        + ["--judges", "fluency,refusal", "--max-new-tokens", "4", "--out", "ev"],
    }
    for command, argv in commands.items():
        code = main([command, *common, *argv])
        assert code == 0, (command, capsys.readouterr().err[-2000:])
        assert attempts == [], f"{command} tried the network: {attempts}"
    # what made it so: the variables the Hub and TRL read, set by icon2_lens, not by conftest
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert constants.HF_HUB_OFFLINE and constants.HF_HUB_DISABLE_TELEMETRY


def test_a_missing_model_is_one_line_and_touches_no_network(
    attempts, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # for a subprocess
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.perf_counter()
    code = main(["extract", "--model", "mymodels/smol", "--n-instructions", "4", "--out", "o"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        "error: model 'mymodels/smol' is neither a local model directory nor in the local Hugging "
        "Face cache — check the path, or allow downloads with --allow-download"
    ), err[0]
    assert attempts == [] and elapsed < 30  # it was 61 s of Hub retries, then a traceback
    for name in ("a/b/c", "nobody/nothing"):  # not even a valid repo id; a valid one not cached
        with pytest.raises(ValueError, match="neither a local model directory"):
            resolve_model(name)
    assert attempts == []


def test_a_cached_hub_id_loads_offline_and_downloads_need_the_opt_in(
    attempts, tmp_path, monkeypatch
):
    """A hub id found in the local Hugging Face cache loads from there, with no socket."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny"
    commit = "0" * 40
    save_tiny_model(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    where, label, local = resolve_model("someone/tiny")
    assert (where, label, local) == (repo / "snapshots" / commit, "someone/tiny", True)
    assert load_model("someone/tiny").cfg.n_layers == 3
    assert attempts == []
    # with the opt-in the id goes to transformers as a hub id (resolving it contacts nothing yet)
    assert resolve_model("someone/tiny", allow_download=True) == (
        "someone/tiny",
        "someone/tiny",
        False,
    )
    assert "HF_HUB_OFFLINE" not in os.environ  # the default icon2_lens had set is taken back
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ... but a user's own setting always wins
    _network.apply_network_defaults(allow_download=True)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_allow_download_flag_and_variable(user_env, monkeypatch):
    from icon2_lens.cli import build_parser

    parser = build_parser()
    for command in ("extract", "synthesize", "filter", "pairs", "sweep", "dpo", "eval", "audit"):
        args = parser.parse_args([command, "--allow-download", *_required(command)])
        assert args.allow_download, command
    assert parser.parse_args(["run", "--allow-download"]).allow_download
    assert not parser.parse_args(["extract"]).allow_download
    assert _network.downloads_allowed() is False
    assert _network.apply_network_defaults() is False and os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user changes it afterwards: theirs now
    _network.apply_network_defaults()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    monkeypatch.setenv(_network.ALLOW_DOWNLOAD_ENV, "1")
    assert _network.downloads_allowed() is True
    assert resolve_model("nobody/nothing")[2] is False  # left to transformers, as before


def _required(command: str) -> list[str]:
    return {
        "filter": ["--instructions", "x.txt"],
        "pairs": ["--kept", "k.jsonl"],
        "dpo": ["--pairs", "p.jsonl", "--out", "o"],
        "audit": ["--out", "o"],
    }.get(command, [])


# --- the PNG export: a separate browser process -----------------------------------------------

_NETWORK_CALL = re.compile(r"\b(?:connect|sendto|sendmsg|sendmmsg)\(.*sa_family=AF_INET")
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def _leaves_the_machine(line: str) -> bool:
    """An strace line that connects or sends to an IPv4/IPv6 address that is not loopback."""
    if not _NETWORK_CALL.search(line):
        return False
    m = _ADDRESS.search(line)
    address = (m.group(1) or m.group(2)) if m else ""
    return not (address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1"))


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_png_export_opens_no_network_connection(tmp_path):
    """strace follows kaleido's Chromium and every child: no connect() to a non-loopback address."""
    from choreographer.browsers import Chromium

    if Chromium.find_browser(skip_local=False) is None:
        pytest.skip(
            "no Chrome/Chromium found (scripts/install.sh installs one): no PNG export here"
        )
    if shutil.which("strace") is None or not _works(["strace", "-f", "-o", "/dev/null", "true"]):
        pytest.skip("strace is missing or not permitted here: cannot watch the browser's connect()")
    prefix = (
        ["unshare", "-n"] if shutil.which("unshare") and _works(["unshare", "-n", "true"]) else []
    )
    log = tmp_path / "strace.log"
    script = (
        "import sys, plotly.graph_objects as go\n"
        "from icon2_lens.figures import write_figures\n"
        "f = go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3])); f.update_layout(width=600, height=400)\n"
        "write_figures({'x': f}, sys.argv[1], html=False)\n"
    )
    trace = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(log)]
    proc = subprocess.run(
        [*prefix, *trace, sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = log.read_text(errors="replace").splitlines()
    outside = [line for line in lines if _leaves_the_machine(line)]
    assert not outside, f"{len(outside)} network calls, e.g.:\n" + "\n".join(outside[:5])
