"""The protocol's words: versions, modes, families, samplers, control types, formats, id patterns."""

from __future__ import annotations

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8760
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/"

MODES = ("generate", "img2img", "inpaint")
# The edit toolbox: grow the canvas and paint the new band; fill a selection with its surroundings.
MODES += ("expand", "remove")
# How masked pixels and new canvas are pre-filled before diffusion (what a strength below 1 starts from).
FILL_MODES = ("none", "neutral", "blur", "border", "inpaint")
MODES = MODES + ("upscale",)  # super-resolution, optionally refined in tiles
MODES = MODES + ("instruct",)  # edit by instruction (InstructPix2Pix, Flux Kontext), optionally inside a mask
FAMILIES = ("sd15", "sdxl", "flux")
SAMPLERS = ("dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a", "ddim", "unipc")
SAMPLERS += ("lcm", "tcd")  # few-step models (LCM, TCD LoRAs); see presets
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")  # "trailing": few-step models (Lightning, Hyper)
LORA_WEIGHT_RANGE = (-2.0, 2.0)
IMAGE_FORMATS = ("png", "webp", "rgba8", "l8")
RESULT_FORMATS = ("png", "webp", "rgba8")
FRAME_ROLES = ("image", "mask", "control", "reference", "result", "preview")
CONTROL_TYPES = ("canny", "lineart", "lineart_anime", "softedge", "depth", "normal", "pose", "scribble",
                 "segmentation", "mlsd", "tile", "shuffle", "inpaint")
# The first three need no weights; the others need annotator checkpoints on the server.
PREPROCESSORS = ("canny", "lineart_standard", "shuffle", "softedge_hed", "softedge_pidinet", "scribble_hed",
                 "depth_midas", "normal_bae", "openpose", "lineart_realistic", "lineart_anime", "mlsd",
                 "segment_anything")
# Control images as painters draw them on a transparent layer: a ready line map is white lines on black; these
# types take the picture itself. (Their transparent pixels are read by these, the server's and Krita's rule.)
LINE_MAP_TYPES = ("canny", "lineart", "lineart_anime", "softedge", "scribble", "mlsd")
PICTURE_CONTROL_TYPES = ("tile", "shuffle", "inpaint")
REFERENCE_MODES = ("reference", "style", "composition", "face")
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,80}$"  # server image ids are the job id plus a suffix
MAX_SEED = 2**32 - 1
BUILTIN_UPSCALER = "lanczos"  # always there: plain resampling, no weights
# What `preprocess: on` runs for each control type. lineart defaults to the weightless one so it works on
# every server; tile and inpaint take the picture itself, so they have none.
DEFAULT_PREPROCESSOR = {"canny": "canny", "lineart": "lineart_standard", "shuffle": "shuffle",
                        "softedge": "softedge_hed", "scribble": "scribble_hed", "depth": "depth_midas",
                        "normal": "normal_bae", "pose": "openpose", "lineart_anime": "lineart_anime",
                        "mlsd": "mlsd", "segmentation": "segment_anything"}
