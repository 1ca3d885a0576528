"""``label --backend openai`` end to end against a real local server: ``transformers serve``.

The test builds a planted chat model directory (:mod:`tests.fixtures.planted_chat`, no
download), starts ``transformers serve DIR --host 127.0.0.1`` as a subprocess, labels two
features of the planted run through the CLI and stops the server. Proxy variables point at a
local listener the whole time: it must see no connection.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.fixtures import planted_chat
from tests.fixtures.fake_llm import PROXY_VARS, Listener
from workbench import db
from workbench.label import main

pytestmark = pytest.mark.slow
_START_SECONDS = 120  # a loaded CI machine; about 8 s on 2 idle cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    """Poll ``/health`` until the server answers; fail with its log if it dies or stalls."""
    deadline = time.monotonic() + _START_SECONDS
    with httpx.Client(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n{log.read_text()}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    pytest.fail(f"transformers serve did not answer in {_START_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, model name) of ``transformers serve`` on the planted chat model."""
    root = tmp_path_factory.mktemp("serve")
    model = planted_chat.build(root / "planted-chat")
    port, log = free_port(), root / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]
    cmd += ["serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", log)
        yield f"http://127.0.0.1:{port}/v1", str(model)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.fixtures import planted_run

    return planted_run.build(tmp_path_factory.mktemp("serve-run") / "run", n_studies=12)


def test_label_through_transformers_serve(server, run, monkeypatch, capsys):
    base_url, model = server
    proxy = Listener()
    try:
        for var in PROXY_VARS:
            monkeypatch.setenv(var, proxy.url)
        argv = ["--run", str(run), "--backend", "openai", "--base-url", base_url]
        argv += ["--model", model, "--features", "0,1", "--no-score-statistical"]
        argv += ["--n-score", "4", "--n-simulate", "2", "--examples-per-prompt", "1"]
        argv += ["--max-tokens", "32", "--retries", "1", "--backoff", "0"]
        assert main(argv) == 0
    finally:
        proxy.close()
    assert proxy.connections == []
    out = capsys.readouterr().out
    assert "label: 2 done, 0 failed, 0 skipped, 0 cached; 2 labels and" in out
    # the planted model names the pacemaker for every feature: right for 0, wrong for 1
    assert f"ground truth, llm:{model}: 1/2 labels name their phantom concept" in out
    con = db.connect(run)
    try:
        labels = con.execute(
            "SELECT feature, label, model FROM feature_labels WHERE method = ? ORDER BY feature",
            [f"llm:{model}"],
        ).fetchall()
        scorers = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT scorer FROM feature_scores WHERE method = ?", [f"llm:{model}"]
            ).fetchall()
        }
    finally:
        con.close()
    assert labels == [(0, "pacemaker", model), (1, "pacemaker", model)]
    judge = f"llm:{model}"
    assert {f"detection:{judge}", f"fuzz:{judge}", f"simulation:{judge}"} <= scorers
