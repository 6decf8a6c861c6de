"""Notebook widgets: the adapter switcher (dropdown, prompt, «Сгенерировать»), replies side by side, sizes.

Only APIs that ipywidgets 7 (Colab ships 7.7.1) and 8 both have; everything shown on screen is Russian.
"""
from __future__ import annotations

import warnings
from html import escape

import ipywidgets as widgets

from .generate import generate
from .names import BASE, loaded_names

AUTO = "auto (router)"  # dropdown value of the router mode; a space, so no adapter can have this name
LABELS = {BASE: "base (без адаптера)", AUTO: "авто (роутер)"}
BUTTON = "Сгенерировать"
BUSY = "Генерирую…"


class AdapterSwitcher(widgets.VBox):
    """Dropdown (adapters, "base", auto) + prompt + «Сгенерировать» button + status line + Output.

    The PeftModel is the only record of which adapter runs: picking an adapter switches the live model at
    once (``lh.switch``); a click generates with the adapter the model has active at that moment (also when
    code switched it since) and labels the reply with it, and the dropdown follows. The options follow
    ``model.peft_config`` on every click and pick (adapters loaded or deleted after the widget was shown).
    In auto mode the router (a router object or a plain ``str -> str`` function) picks the adapter from the
    prompt on each click. The button is disabled while a reply is generated, and any error is shown in the
    Output (type and message) instead of being raised into the notebook. ``last_adapter`` and ``last_reply``
    keep the last successful run.
    """

    def __init__(self, model, tokenizer, router=None, max_new_tokens: int = 96, prompt: str = ""):
        from .router import as_router

        self.model, self.tokenizer = model, tokenizer
        self.router = None if router is None else as_router(router)
        self.max_new_tokens = max_new_tokens
        self._syncing = False
        self.dropdown = widgets.Dropdown(options=[], description="Адаптер:")
        self.prompt = widgets.Textarea(value=prompt, placeholder="Введите запрос…", description="Запрос:",
                                       layout=widgets.Layout(width="95%", height="80px"))
        self.button = widgets.Button(description=BUTTON, button_style="primary", icon="play")
        self.status = widgets.HTML()
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ccc", min_height="40px"))
        self.last_adapter: str | None = None
        self.last_reply: str | None = None
        self.refresh()
        self.dropdown.observe(self._on_pick, names="value")
        self.button.on_click(self._on_generate)
        super().__init__([widgets.HBox([self.dropdown, self.button]), self.prompt, self.status, self.output])

    def _active(self) -> str:
        from .adapters import active_adapter

        active = active_adapter(self.model)
        return active if isinstance(active, str) else ", ".join(active)

    def refresh(self, keep_auto: bool = False) -> None:
        """Rebuild the options from ``model.peft_config`` and show the adapter the model runs now."""
        options = loaded_names(self.model) + [BASE] + ([AUTO] if self.router is not None else [])
        active = self._active()
        value = AUTO if keep_auto and AUTO in options else active if active in options else None
        self._syncing = True  # setting options/value here must not switch the model
        try:
            pairs = [(LABELS.get(o, o), o) for o in options]
            if list(self.dropdown.options) != pairs:
                self.dropdown.options = pairs
            self.dropdown.value = value
        finally:
            self._syncing = False
        self._show_status(active)

    def _show_status(self, name: str, note: str = "") -> None:
        self.status.value = f"<b>Активный адаптер:</b> <code>{escape(name)}</code> {escape(note)}".rstrip()

    def _clear(self) -> None:
        # Not clear_output(): in a browser its echo ("outputs = []") can arrive after the new reply and erase it.
        self.output.outputs = ()

    def _show_error(self, e: BaseException) -> None:
        self.output.append_stderr(f"Ошибка — {type(e).__name__}: {e}\n")

    def _switch(self, name: str) -> None:
        """``lh.switch``, with its warnings (an untrained adapter) shown in the Output, not lost in a log."""
        from .adapters import switch

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            switch(self.model, name)
        for w in caught:
            self.output.append_stderr(f"Предупреждение: {w.message}\n")

    def _on_pick(self, change) -> None:
        name = change["new"]
        if self._syncing or name in (AUTO, None):
            return
        self._clear()
        try:
            self._switch(name)
        except Exception as e:  # a stale option (adapter deleted since) must not raise inside a callback
            self._show_error(e)
            self.refresh()
            return
        self._show_status(name)

    def _on_generate(self, _button=None) -> str:
        self._clear()
        self.button.disabled, self.button.description = True, BUSY
        text = self.prompt.value
        try:
            auto, note = self.dropdown.value == AUTO, ""
            if auto:
                name = self.router.route(text)
                note = f"(роутер: {self.router.explain(text)})"
                self._switch(name)
            self.refresh(keep_auto=auto)  # the model, not the dropdown, says which adapter runs
            name = self._active()
            self._show_status(name, note)
            reply = generate(self.model, self.tokenizer, text, max_new_tokens=self.max_new_tokens)
        except Exception as e:  # any error is shown to the learner, not raised into a callback nobody sees
            self._show_error(e)
            return ""
        finally:
            self.button.disabled, self.button.description = False, BUTTON
        self.last_adapter, self.last_reply = name, reply
        self.output.append_stdout(f"[{name}]\n{reply}\n")
        return reply


def adapter_switcher(model, tokenizer, router=None, **kw) -> AdapterSwitcher:
    """The notebook widget: ``display(lh.adapter_switcher(model, tok, router=router))``."""
    return AdapterSwitcher(model, tokenizer, router=router, **kw)


def show_replies(prompt: str, replies: dict):
    """One prompt's replies side by side (adapter -> reply) as an HTML table (a notebook shows the result)."""
    from IPython.display import HTML

    from .tables import html
    return HTML(f"<p><b>Запрос:</b> {escape(prompt)}</p>" + html([replies], pre=True))


def plot_sizes(sizes: dict, ax=None):
    """Bar chart of sizes in МиБ (2**20 bytes) on a log scale (an adapter vs a whole model)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.2))
    mib = [v / 2**20 for v in sizes.values()]
    bars = ax.barh(list(sizes), mib, color=["#4c9be8", "#e8834c", "#7bc47f", "#b07be8"][: len(mib)])
    ax.set_xscale("log")
    ax.set_xlabel("МиБ (логарифмическая шкала)")
    for bar, v in zip(bars, mib):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f} МиБ", va="center")
    ax.margins(x=0.3)
    return ax
