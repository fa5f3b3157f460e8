"""WebUI entry point: registers the Easel tab and its settings.

The WebUI loads this file by path, so the extension's folder (copied or symlinked into
``extensions/``) is put on ``sys.path`` for its ``easel_a1111`` package.
"""

import os
import sys

_extension = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if _extension not in sys.path:
    sys.path.insert(0, _extension)

from easel_a1111 import webui  # noqa: E402

webui.register()
