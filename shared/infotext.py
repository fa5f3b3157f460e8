"""A result's parameters as A1111's "infotext": the text the WebUI keeps in every picture it saves, which its
PNG Info tab, "Send to" buttons, image browsers and model sites read back. Pure: text in, text out."""

from __future__ import annotations

import json

# A1111's names for Easel's samplers (WebUI 1.8 has LCM; Forge also TCD).
SAMPLER_LABELS = {"dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M Karras", "euler": "Euler",
                  "euler_a": "Euler a", "ddim": "DDIM", "unipc": "UniPC", "lcm": "LCM", "tcd": "TCD"}

_MASKED_MODES = ("inpaint", "remove")


def infotext(parameters: dict, seed: int, size: tuple[int, int]) -> str:
    """``parameters`` (a result's, as run) in the WebUI's infotext format: the prompt, a "Negative prompt:"
    line, then "Key: value" items; Easel's own settings under "Easel …" keys, which the WebUI passes over.
    ``masked`` in ``parameters``: an instruct edit inside a mask."""
    # the WebUI keeps <lora:> tags in the prompt it saves, so a pasted prompt brings its LoRAs back
    tags = "".join(f" <lora:{lora['name']}:{lora['weight']:g}>" for lora in parameters.get("loras") or [])
    # the prompt as encoded, a preset's template applied: what a WebUI (or the Easel tab, which sends no preset) runs
    lines = [(parameters.get("encoded_prompt", parameters.get("prompt", "")) + tags).strip()]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    mode = parameters.get("mode")
    items = [("Steps", parameters.get("steps")),
             ("Sampler", SAMPLER_LABELS.get(parameters.get("sampler"), parameters.get("sampler"))),
             ("CFG scale", parameters.get("guidance")), ("Seed", seed), ("Size", f"{size[0]}x{size[1]}"),
             ("Model", parameters.get("model")), ("Denoising strength", parameters.get("strength"))]
    if mode == "generate" and parameters.get("refine"):  # above the native size: the refine's strength
        items[-1] = ("Denoising strength", parameters["refine"])
        # not the WebUI's "Hires upscaler": with it txt2img's paste switches on its hires fix, which would
        # enlarge this Size (the final one, not a first pass) again
        items.append(("Easel upscaler", parameters.get("upscaler")))
    if mode == "upscale":  # the WebUI's Extras names; the refine's strength (0: none)
        if not parameters.get("refine"):  # the upscaler alone: no model, sampler or seed took part
            items = [("Size", f"{size[0]}x{size[1]}")]
        else:
            items[-1] = ("Denoising strength", parameters["refine"])
        items += [("Postprocess upscale by", parameters.get("scale")),
                  ("Postprocess upscaler", parameters.get("upscaler"))]
    # the WebUI's own key, which its paste reads: without it a picture made at clip skip 2 is remade from its
    # infotext at the last layer (other pixels from the same seed)
    items.append(("Clip skip", parameters.get("clip_skip")))
    if mode == "instruct":  # the WebUI's own name for InstructPix2Pix's image guidance
        items.append(("Image CFG scale", parameters.get("image_guidance")))
    if mode in _MASKED_MODES or parameters.get("masked"):
        items += [("Mask blur", parameters.get("mask_feather")), ("Easel mask grow", parameters.get("mask_grow"))]
        items.append(("Easel soft inpainting", parameters.get("soft_inpaint")))
        # the WebUI's names for the diffused crop's context: its paste reads a missing padding as 32
        if parameters.get("mask_padding") is not None:
            items += [("Inpaint area", "Only masked"), ("Masked area padding", parameters["mask_padding"])]
    if mode in _MASKED_MODES + ("expand",):
        items.append(("Easel fill", parameters.get("fill")))
    if mode == "expand":
        items.append(("Easel expand", _quote(", ".join(str(parameters.get(f"expand_{side}", 0))
                                                       for side in ("left", "top", "right", "bottom")))))
    items.append(("Easel mode", mode))
    # a preset may set what no other key shows (its timestep spacing, a few-step schedule)
    items.append(("Easel preset", parameters.get("preset")))
    for number, unit in enumerate(parameters.get("control") or [], 1):
        # (the resolution a preprocessor ran at makes another control map, so other pixels)
        resolution = f", resolution {unit['resolution']}" if unit.get("resolution") else ""
        items.append((f"Easel control {number}", _quote(f"{unit['type']}, preprocess {unit['preprocess']}, "
                                                        f"scale {unit['scale']:g}, {unit['start']:g}-{unit['end']:g}"
                                                        f"{resolution}")))
    for number, ref in enumerate(parameters.get("references") or [], 1):
        items.append((f"Easel reference {number}", _quote(f"{ref['mode']}, weight {ref['weight']:g}")))
    lines.append(", ".join(f"{key}: {value}" for key, value in items if value is not None))
    # no empty first line for a job without a prompt (remove, expand): the WebUI writes none either
    return "\n".join(line for number, line in enumerate(lines) if line or number)


def _quote(text: str) -> str:
    # The WebUI's infotext parser reads a JSON string where a value holds a comma.
    return json.dumps(text) if "," in text or ":" in text else text
