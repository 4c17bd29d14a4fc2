"""``tunelab ui``: a local web page over run folders (Gradio).

Tabs: Experiments (each comparison's progress, recommendation, leaderboard and plots), Answers
(a strategy's answers beside the references with their scores, a second strategy beside it,
optionally only where they disagree), Training (a trained run's curves) and Chat (any run,
through the same pool as ``tunelab serve``). Nothing here writes to a run folder.
"""

import io
import threading
from pathlib import Path

from tunelab.ui import browse
from tunelab.ui.chat import ChatRooms

NONE = "(none)"
PROGRESS_EVERY = 2.0  # seconds between refreshes of a running compare's progress


def build_app(root: Path, rooms: ChatRooms):
    import gradio as gr

    # Gradio runs handlers on several threads (a page load and the progress tick can overlap)
    # and matplotlib's text layout is not thread-safe: figures are drawn to PNG one at a time.
    drawing = threading.Lock()

    def picture(make, *args):
        with drawing:
            fig = make(*args)
            if fig is None:
                return None
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
        from PIL import Image

        return Image.open(buffer)

    def experiments() -> list[str]:
        return [browse.label_of(root, f) for f in browse.find_runs(root, "compare")]

    def trained() -> list[str]:
        return [browse.label_of(root, f) for f in browse.find_runs(root, "train")]

    def show_experiment(label: str | None):
        if not label:
            hint = f"No comparison under {root} yet: run `tunelab compare EXPERIMENT.yaml`."
            return [], hint, None, None, "", _pick([]), _pick([NONE], NONE)
        folder = root / label
        progress = browse.progress_text(folder)
        experiment = browse.load_experiment(folder)
        if experiment is None:
            text = "No leaderboard yet: it appears when the compare finishes."
            return [], text, None, None, progress, _pick([]), _pick([NONE], NONE)
        from tunelab.compare.report import cost_plot, quality_plot

        cells, text, rows = browse.leaderboard(experiment)
        names = [r.name for r in rows]
        return (
            cells, text, picture(quality_plot, rows, experiment.metric),
            picture(cost_plot, rows, experiment.metric),
            progress, _pick(names), _pick([NONE] + names, NONE),
        )  # fmt: skip

    def show_answers(label: str | None, first: str | None, second: str | None, only: bool):
        experiment = browse.load_experiment(root / label) if label else None
        if experiment is None or not first:
            return gr.update(value=[], headers=["input", "reference"])
        other = None if second in (None, NONE) else second
        headers, rows = browse.answers(experiment, first, other, only)
        return gr.update(value=rows, headers=headers)

    def show_curves(label: str | None):
        return picture(browse.curves_figure, root / label) if label else None

    def reload(experiment_label: str | None, run_label: str | None, target_label: str | None):
        """Comparisons and runs that appeared since the page opened."""
        rooms.refresh()
        return (
            _keep(experiments(), experiment_label),
            _keep(trained(), run_label),
            _keep(rooms.choices, target_label),
        )

    def respond(message: str, history: list, target: str, temperature: float, max_tokens: int):
        if not message.strip():
            yield history, ""
            return
        history = list(history or [])
        shown = history + [{"role": "user", "content": message},
                           {"role": "assistant", "content": ""}]  # fmt: skip
        settings = {"temperature": max(float(temperature or 0), 0.0),
                    "max_tokens": max(int(max_tokens or 1), 1)}  # fmt: skip
        try:
            for answer in rooms.reply(target, history, message, **settings):
                shown[-1] = {"role": "assistant", "content": answer}
                yield shown, ""
        except Exception as err:  # shown in the page; the server goes on
            shown[-1] = {"role": "assistant", "content": f"error: {err}"}
            yield shown, ""

    with gr.Blocks(title="TuneLab") as app:
        with gr.Row():
            gr.Markdown(f"# TuneLab · {root}")
            refresh = gr.Button("reload runs", scale=0)
        found = experiments()
        with gr.Tab("Experiments"):
            experiment = gr.Dropdown(found, value=next(iter(found), None), label="experiment")
            progress = gr.Markdown()
            recommendation = gr.Markdown()
            board = gr.Dataframe(headers=browse.LEADERBOARD_COLUMNS, label="leaderboard",
                                 interactive=False, wrap=True, elem_id="leaderboard")  # fmt: skip
            with gr.Row():
                quality = gr.Image(label="quality", type="pil", interactive=False)
                cost = gr.Image(label="quality against cost", type="pil", interactive=False)
        with gr.Tab("Answers"):
            with gr.Row():
                first = gr.Dropdown([], label="strategy")
                second = gr.Dropdown([NONE], value=NONE, label="beside it")
                only = gr.Checkbox(False, label="only disagreements")
            table = gr.Dataframe(label="answers", interactive=False, wrap=True, elem_id="answers")
        with gr.Tab("Training"):
            runs = trained()
            run = gr.Dropdown(runs, value=next(iter(runs), None), label="trained run")
            curves = gr.Image(label="training curves", type="pil", interactive=False)
        with gr.Tab("Chat"):
            with gr.Row():
                target = gr.Dropdown(rooms.choices, value=rooms.choices[0], label="talk to",
                                     scale=4)  # fmt: skip
                temperature = gr.Number(0.0, minimum=0, maximum=2, step=0.1,
                                        label="temperature (0 = greedy)")  # fmt: skip
                max_tokens = gr.Number(128, minimum=1, maximum=1024, step=1, precision=0,
                                       label="max tokens")  # fmt: skip
            chatbot = gr.Chatbot(label="conversation", height=360, elem_id="conversation")
            message = gr.Textbox(label="message", placeholder="Type and press Enter")
            clear = gr.Button("clear")
        timer = gr.Timer(PROGRESS_EVERY)
        seen = gr.State(0.0)  # when the leaderboard shown was written

        shown = [board, recommendation, quality, cost, progress, first, second]
        answer_inputs = [experiment, first, second, only]

        def stamp(label: str | None) -> float:
            return browse.results_stamp(root / label) if label else 0.0

        # the strategy names may be the same in the next experiment: refresh the answers too
        experiment.change(show_experiment, experiment, shown).then(
            show_answers, answer_inputs, table
        ).then(stamp, experiment, seen)
        # a page opened later sees the runs that exist now, not those at start-up
        app.load(reload, [experiment, run, target], [experiment, run, target]).then(
            show_experiment, experiment, shown
        ).then(show_answers, answer_inputs, table).then(stamp, experiment, seen)

        def tick(label: str | None, seen: float):
            """The progress text; everything when the leaderboard changed since shown."""
            if not label:
                return ("", seen) + (gr.skip(),) * 6
            written = stamp(label)
            if written == seen:
                return (browse.progress_text(root / label), seen) + (gr.skip(),) * 6
            board_, text, q, c, prog, f, sec = show_experiment(label)
            return (prog, written, board_, text, q, c, f, sec)

        ticked = [progress, seen, board, recommendation, quality, cost, first, second]
        timer.tick(tick, [experiment, seen], ticked)
        for control in (first, second, only):
            control.change(show_answers, answer_inputs, table)
        run.change(show_curves, run, curves)
        app.load(show_curves, run, curves)
        refresh.click(reload, [experiment, run, target], [experiment, run, target])
        message.submit(respond, [message, chatbot, target, temperature, max_tokens],
                       [chatbot, message])  # fmt: skip
        target.change(lambda: [], None, chatbot)
        clear.click(lambda: [], None, chatbot)
    return app


def serve_app(app, host: str, port: int, *, loopback: bool, block: bool = True) -> None:
    """Gradio's server on ``host:port``: no share link, no browser opened, no fonts fetched
    from the internet (system fonts), errors shown in the page only on a loopback address."""
    import gradio as gr

    font = [gr.themes.Font("system-ui"), "sans-serif"]
    mono = [gr.themes.Font("ui-monospace"), "monospace"]
    app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
        footer_links=[], show_error=loopback, prevent_thread_lock=not block,
        theme=gr.themes.Default(font=font, font_mono=mono),
    )  # fmt: skip


def _pick(names: list[str], value: str | None = None):
    import gradio as gr

    return gr.update(choices=names, value=value if value else (names[0] if names else None))


def _keep(names: list[str], current: str | None):
    """New choices, keeping the current one when it is still there."""
    import gradio as gr

    return gr.update(choices=names, value=current if current in names else next(iter(names), None))
