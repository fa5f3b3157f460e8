"""The WebUI's pre-1.8 name for ``infotext_utils``; it still works there as an alias."""

from modules.infotext_utils import *  # noqa: F401,F403
from modules.infotext_utils import ParamBinding, create_buttons, register_paste_params_button  # noqa: F401
