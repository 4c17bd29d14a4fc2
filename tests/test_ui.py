"""`tunelab ui`: the views as functions of run folders, and the page driven in a headless
browser (open an experiment, its leaderboard, a strategy's answers, one chat message)."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tunelab.prompting.strategy import PromptStrategy
from tunelab.ui import browse


def _working_chromium() -> str | None:
    """A Chromium that starts (a distribution's stub that only points to a snap does not)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        return None
    try:
        ran = subprocess.run([path, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if ran.returncode == 0 and b"Chromium" in ran.stdout else None


CHROMIUM = _working_chromium()


def test_runs_are_found_and_the_leaderboard_matches_results(finished_comparison):
    root = finished_comparison.parent
    assert browse.find_runs(root, "compare") == [finished_comparison]
    assert browse.find_runs(root, "train") == [finished_comparison / "lora"]
    experiment = browse.load_experiment(finished_comparison)
    cells, text, rows = browse.leaderboard(experiment)
    assert [c[1] for c in cells] == [r.name for r in rows] and len(cells) == 3
    assert len(cells[0]) == len(browse.LEADERBOARD_COLUMNS)
    assert text.startswith("Best accuracy")


def test_answers_side_by_side_and_filtered_to_disagreements(finished_comparison):
    experiment = browse.load_experiment(finished_comparison)
    headers, rows = browse.answers(experiment, "lora", "base")
    assert headers == ["#", "input", "reference", "lora answer", "lora accuracy",
                       "base answer", "base accuracy"]  # fmt: skip
    test = [json.loads(x) for x in (finished_comparison.parents[1] / "test.jsonl").open()]
    assert [r[1] for r in rows] == [t["text"] for t in test]
    _, differing = browse.answers(experiment, "lora", "base", disagreements=True)
    assert differing == [r for r in rows if r[4] != r[6]]
    _, wrong = browse.answers(experiment, "lora", None, disagreements=True)
    assert wrong == [r[:5] for r in rows if r[4] < 1]


def test_training_curves_and_progress_views(finished_comparison, tmp_path):
    assert browse.curves_figure(finished_comparison / "lora") is not None
    assert browse.curves_figure(finished_comparison / "base") is None
    assert browse.progress_text(finished_comparison).startswith("**finished** · 3 of 3")
    state = json.loads((finished_comparison / "progress.json").read_text())
    state.update(state="running", pid=2**22 + 12345, current={"name": "lora", "phase": "test",
                                                              "done": 1, "total": 4})  # fmt: skip
    (tmp_path / "progress.json").write_text(json.dumps(state))
    assert "stopped (its process is gone" in browse.progress_text(tmp_path)
    state["pid"] = os.getpid()
    (tmp_path / "progress.json").write_text(json.dumps(state))
    text = browse.progress_text(tmp_path)
    assert "strategy 3 of 3: **lora** · test 1/4" in text and "[#####" in text


def test_chat_rooms_offer_every_run_and_prompt_strategy(finished_comparison, tiny_model_dir):
    from tunelab.ui.chat import ChatRooms

    rooms = ChatRooms(finished_comparison.parent, {"device": "cpu", "dtype": "float32"},
                      str(tiny_model_dir))  # fmt: skip
    try:
        assert rooms.choices == [f"base model ({tiny_model_dir})", "tracked/lora (lora)",
                                 "tracked/base (prompt)", "tracked/refined (optimize)"]  # fmt: skip
        answers = list(rooms.reply("tracked/lora (lora)", [], "card charged twice",
                                   max_tokens=4, temperature=1.0))  # fmt: skip
        assert answers and all(a.startswith(b) for a, b in zip(answers[1:], answers, strict=False))
        refined = rooms.targets["tracked/refined (optimize)"]
        persona = replace(refined, strategy=PromptStrategy(name="x", system="You bill."))
        pool = rooms._acquire(persona)
        served = rooms._served(pool, persona)
        rooms._release(persona)
        messages = pool.messages(served, [{"role": "user", "content": "hi"}])
        system = messages[0]  # its own system text, and the task's instruction with its labels
        assert system["role"] == "system" and system["content"].startswith("You bill.")
        assert "billing, login" in system["content"]
    finally:
        rooms.close()


def test_the_page_is_served_without_a_browser(finished_comparison, tiny_model_dir):
    """Builds the page and starts Gradio's server as `tunelab ui` does (catches an API the
    installed Gradio does not have even where no browser is installed)."""
    pytest.importorskip("gradio")
    from tunelab.ui.app import build_app, serve_app
    from tunelab.ui.chat import ChatRooms

    rooms = ChatRooms(finished_comparison.parent, {"device": "cpu", "dtype": "float32"},
                      str(tiny_model_dir))  # fmt: skip
    app = build_app(finished_comparison.parent, rooms)
    port = _free_port()
    serve_app(app, "127.0.0.1", port, loopback=True, block=False)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "<title>TuneLab</title>" in page or "TuneLab" in page
        assert "fonts.googleapis.com" not in page
    finally:
        app.close()
        rooms.close()


def test_ui_refuses_a_missing_folder_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    result = CliRunner().invoke(app, ["ui", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such folder" in result.output


@pytest.mark.skipif(
    CHROMIUM is None or importlib.util.find_spec("playwright") is None
    or importlib.util.find_spec("gradio") is None,
    reason="needs chromium, playwright and gradio (make test installs them; apt chromium)",
)  # fmt: skip
def test_ui_in_a_headless_browser(finished_comparison, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    root = finished_comparison.parent
    before = _snapshot(root)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "ui", str(root), "--port", str(port),
         "--model", str(tiny_model_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | {"GRADIO_TEMP_DIR": str(tmp_path / "gradio")},
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
            ])  # fmt: skip
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.get_by_label("experiment")).to_have_value("tracked", timeout=60_000)
            board = page.locator("#leaderboard")
            for name in ("base", "refined", "lora"):
                expect(board.get_by_role("gridcell", name=name, exact=True).first).to_be_visible(
                    timeout=60_000
                )
            expect(page.get_by_text("Best accuracy")).to_be_visible()

            page.get_by_role("tab", name="Answers").click()
            answers = page.locator("#answers")
            cell = answers.get_by_role("gridcell", name="card charged twice", exact=True)
            expect(cell.first).to_be_visible(timeout=60_000)

            page.get_by_role("tab", name="Chat").click()
            page.get_by_label("talk to").click()
            page.get_by_role("option", name="tracked/lora (lora)").click()
            page.get_by_label("temperature (0 = greedy)").fill("1")
            page.get_by_label("max tokens").fill("8")
            message = page.get_by_label("message")
            message.fill("my card was charged twice")
            message.press("Enter")
            reply = page.locator("#conversation .message.bot").last
            expect(reply).not_to_have_text("", timeout=120_000)
            expect(reply).not_to_contain_text("error:")  # a failure is shown as the reply
            expect(page.locator("#conversation")).to_contain_text("my card was charged twice")
            browser.close()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output
    assert _snapshot(root) == before  # read-only on the run folders


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(server.communicate()[0])
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def test_the_chat_picker_says_which_strategies_answer_without_their_vote():
    from tunelab.ui.chat import _without_vote

    assert _without_vote({"knn_weight": 0.5, "shots": 8}) == " [answers without its knn vote 0.5]"
    assert _without_vote({"shots": 8}) == _without_vote({"knn_weight": 0.0}) == ""
