"""The WebUI's callback registry, reduced to the UI callbacks (same names and signatures)."""

ui_tabs_callbacks = []
ui_settings_callbacks = []


def on_ui_tabs(callback, *, name=None):
    """``callback()`` returns a list of (gr.Blocks, title, elem_id)."""
    ui_tabs_callbacks.append(callback)


def on_ui_settings(callback, *, name=None):
    ui_settings_callbacks.append(callback)


def ui_tabs_callback():
    tabs = []
    for callback in ui_tabs_callbacks:
        tabs += callback() or []
    return tabs


def ui_settings_callback():
    for callback in ui_settings_callbacks:
        callback()
