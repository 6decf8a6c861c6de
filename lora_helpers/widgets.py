"""Notebook widgets: a dropdown that switches the model's adapter, a prompt box and a Generate button."""
from __future__ import annotations

import ipywidgets as widgets

from .errors import AdapterError
from .generate import generate
from .names import BASE

AUTO = "auto (router)"


class AdapterSwitcher(widgets.VBox):
    """Dropdown (adapters, "base", "auto (router)") + Textarea + Generate button + Output.

    Picking an adapter switches the live model at once (``lh.switch``); in "auto" mode the router picks
    the adapter from the prompt on each Generate. ``last_adapter`` and ``last_reply`` keep the last run.
    """

    def __init__(self, model, tokenizer, router=None, max_new_tokens: int = 96, prompt: str = ""):
        from .adapters import active_adapter

        self.model, self.tokenizer, self.router = model, tokenizer, router
        self.max_new_tokens = max_new_tokens
        names = list(getattr(model, "peft_config", {}) or {})
        options = names + [BASE] + ([AUTO] if router is not None else [])
        self.dropdown = widgets.Dropdown(options=options, value=active_adapter(model), description="Адаптер:")
        self.prompt = widgets.Textarea(value=prompt, placeholder="Введите запрос…", description="Запрос:",
                                       layout=widgets.Layout(width="95%", height="80px"))
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.status = widgets.HTML()
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ccc", min_height="40px"))
        self.last_adapter: str | None = None
        self.last_reply: str | None = None
        self.dropdown.observe(self._on_pick, names="value")
        self.button.on_click(self._on_generate)
        self._show_status(active_adapter(model))
        super().__init__([widgets.HBox([self.dropdown, self.button]), self.prompt, self.status, self.output])

    def _show_status(self, name: str, note: str = "") -> None:
        self.status.value = f"<b>Активный адаптер:</b> <code>{name}</code> {note}"

    def _on_pick(self, change) -> None:
        from .adapters import switch

        if change["new"] != AUTO:
            switch(self.model, change["new"])
            self._show_status(change["new"])

    def _on_generate(self, _button=None) -> str:
        from .adapters import switch

        # Not clear_output(): in a browser its echo ("outputs = []") can arrive after the new reply and erase it.
        self.output.outputs = ()
        text = self.prompt.value
        try:
            name, note = self.dropdown.value, ""
            if name == AUTO:
                name = self.router.route(text)
                note = f"(маршрутизатор: {self.router.explain(text)})"
                switch(self.model, name)
            self._show_status(name, note)
            reply = generate(self.model, self.tokenizer, text, max_new_tokens=self.max_new_tokens)
        except AdapterError as e:  # bad input is shown to the learner, not raised into the void
            self.output.append_stderr(f"{type(e).__name__}: {e}\n")
            return ""
        self.last_adapter, self.last_reply = name, reply
        self.output.append_stdout(f"[{name}]\n{reply}\n")
        return reply


def adapter_switcher(model, tokenizer, router=None, **kw) -> AdapterSwitcher:
    """The notebook widget: ``display(lh.adapter_switcher(model, tok, router=router))``."""
    return AdapterSwitcher(model, tokenizer, router=router, **kw)


def show_replies(prompt: str, replies: dict):
    """One prompt's replies side by side (adapter -> reply) as an HTML table (a notebook shows the result)."""
    from html import escape

    from IPython.display import HTML

    head = "".join(f"<th style='text-align:left'>{escape(name)}</th>" for name in replies)
    body = "".join(f"<td style='vertical-align:top;text-align:left'><pre style='white-space:pre-wrap'>"
                   f"{escape(text)}</pre></td>" for text in replies.values())
    return HTML(f"<p><b>Запрос:</b> {escape(prompt)}</p><table><tr>{head}</tr><tr>{body}</tr></table>")


def plot_sizes(sizes: dict, ax=None):
    """Bar chart of sizes in MiB on a log scale (an adapter vs a whole model)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.2))
    mib = [v / 2**20 for v in sizes.values()]
    bars = ax.barh(list(sizes), mib, color=["#4c9be8", "#e8834c", "#7bc47f", "#b07be8"][: len(mib)])
    ax.set_xscale("log")
    ax.set_xlabel("MiB (логарифмическая шкала)")
    for bar, v in zip(bars, mib):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f} MiB", va="center")
    ax.margins(x=0.3)
    return ax
