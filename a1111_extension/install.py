"""Run by the WebUI at start-up: install what the Easel tab needs into the WebUI's environment.

The tab needs only ``websockets`` with its synchronous client (11 or later); gradio already pulls
it in, so this usually does nothing. Everything heavy runs in the Easel backend's own environment.
"""

from importlib import metadata

import launch

NEED = "websockets"


def too_old(package: str, major: int) -> bool:
    try:
        return int(metadata.version(package).split(".")[0]) < major
    except (metadata.PackageNotFoundError, ValueError):
        return True


if not launch.is_installed(NEED) or too_old(NEED, 11):
    # gradio 3's gradio_client (A1111 1.x) breaks on websockets 12 and later, gradio 4's (Forge) on 13.
    bound = ",<12" if too_old("gradio", 4) else ",<13"
    launch.run_pip(f'install "{NEED}>=11{bound}"', "websockets for the Easel tab")
