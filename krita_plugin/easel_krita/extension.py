"""Registration with Krita: the docker factory and the Generate / Cancel actions."""

from __future__ import annotations

from . import host

DOCKER_ID = "easel_docker"
ACTIONS = {"easel_generate": "Easel: Generate", "easel_cancel": "Easel: Cancel"}

_dockers: list = []  # live dockers; the actions drive the first visible one


def dockers() -> list:
    return _dockers


def forget(docker) -> None:
    if docker in _dockers:
        _dockers.remove(docker)


class EaselExtension(host.Extension):
    """Menu actions (Tools > Scripts) with shortcuts from ``easel_krita.action``."""

    def setup(self):
        pass

    def createActions(self, window):
        for name, text in ACTIONS.items():
            action = window.createAction(name, text, "tools/scripts")
            action.triggered.connect(lambda _=False, name=name: self._trigger(name))

    @staticmethod
    def _trigger(name: str) -> None:
        docker = next((d for d in _dockers if d.isVisible()), _dockers[0] if _dockers else None)
        if docker is None:
            return
        if name == "easel_generate":
            docker.generate()
        else:
            docker.cancel()


def register() -> None:
    """Called once when Krita imports the plugin."""
    from .docker import EaselDocker

    app = host.instance()
    app.addExtension(EaselExtension(app))
    app.addDockWidgetFactory(host.DockWidgetFactory(DOCKER_ID, host.DockWidgetFactoryBase.DockRight, EaselDocker))
