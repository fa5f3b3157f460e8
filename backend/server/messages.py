"""Every message the server sends, built from typed values: the server side's wire names live here.

Text messages are returned as dicts (the transport writes them as JSON); pictures as binary frames
(``shared.images.encode_frame``). What they must look like is ``shared.messages.SERVER_MESSAGES`` and
``FRAME_HEADER_FIELDS``, from which ``docs/protocol.schema.json`` is generated; the tests check live
traffic against that schema. Nothing here encodes pixels or touches a socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import shared
from backend.engine.job import EditJob
from backend.engine.passes import Pass, layer_box
from backend.presets import Preset
from backend.presets import describe as describe_presets
from shared.errors import ProtocolError
from shared.images import ImageData, encode_frame
from shared.loras import split_prompt
from shared.messages import FAMILIES, IMAGE_FORMATS, MODES, PROTOCOL_VERSION, REFERENCE_MODES, SAMPLERS
from shared.rules import seed_range
from shared.vocabulary import BUILTIN_UPSCALER

if TYPE_CHECKING:  # type hints only: importing the engine here would pull torch into the message layer
    from backend.config import Config
    from backend.engine.engine import EngineResult, Layer
    from backend.engine.loras import LoraDescription
    from backend.engine.models import ModelDescription, ModelError
    from backend.engine.upscalers import UpscalerDescription
    from backend.jobs import Job

SERVER_NAME = f"easel/{shared.__version__}"


def welcome(config: Config, device: str, preprocessors: list[str], default_model: str | None,
            upscalers: list[str] | None = None, session: str | None = None, resumed: bool = False,
            loras: list[LoraDescription] = (), embeddings: list[dict] | None = None) -> dict:
    """The answer to ``hello``: who we are and what this server can do."""
    limits = config.limits
    return {
        "type": "welcome", "server": SERVER_NAME, "protocol": PROTOCOL_VERSION,
        "capabilities": {
            "modes": list(MODES), "families": list(FAMILIES), "samplers": list(SAMPLERS),
            "image_formats": list(IMAGE_FORMATS),
            "control_types": sorted({kind for types in config.controlnets.values() for kind in types}),
            "preprocessors": preprocessors,
            "reference_families": sorted(config.ip_adapters),
            "reference_modes": [mode for mode in REFERENCE_MODES if mode != "face" or any(
                spec.face for spec in config.ip_adapters.values())],
            "limits": {"max_steps": limits.max_steps, "max_batch": limits.max_batch,
                       "max_side": limits.max_side, "max_pixels": limits.max_pixels,
                       "max_message_bytes": limits.max_message_bytes,
                       "max_generate_side": limits.max_generate_side},
            "upscalers": list(upscalers or [BUILTIN_UPSCALER]),
            "loras": lora_list(loras),
            "presets": describe_presets(config.presets),
            "embeddings": embeddings or [],
        },
        "device": device, "default_model": default_model,
        **({"session": session} if session else {}), **({"resumed": True} if resumed else {}),
    }


def accepted(job_id: str, position: int) -> dict:
    return {"type": "accepted", "job": job_id, "position": position}


def started(job: Job, steps: int, passes: list[Pass]) -> dict:
    """``started``: the model, the steps per pass and, for edits of a picture, where the passes go."""
    work = job.work
    edit = isinstance(work, EditJob)
    message = {"type": "started", "job": job.id, "model": work.model if edit else work.preprocessor,
               "steps": steps, "diffusion_size": list(passes[0].size)}
    if edit and (work.mode != "generate" or len(passes) > 1):  # a large generate lists its two stages
        message["box"] = layer_box(passes).as_list()
        if work.mode == "expand":  # the result is the whole new canvas
            message["box"] = [0, 0, work.image.shape[1], work.image.shape[0]]
        message["passes"] = [{"box": p.box.as_list(), "diffusion_size": list(p.size)} for p in passes]
    return message


def progress(job_id: str, step: int, total: int, preview: str | None = None) -> dict:
    """``progress``; ``preview`` is the id of the preview frame sent just before it."""
    message = {"type": "progress", "job": job_id, "step": step, "total": total}
    if preview is not None:
        message["preview"] = preview
    return message


def preview_frame(job_id: str, step: int, image: ImageData) -> tuple[str, bytes]:
    """A preview's image id and binary frame."""
    image_id = f"{job_id}.p{step}"
    return image_id, encode_frame({"image": image_id, "job": job_id, "role": "preview", "format": image.format,
                                   "width": image.width, "height": image.height, "step": step}, image.data)


def result_frame(job_id: str, index: int, image: ImageData) -> tuple[str, bytes]:
    """A result image's id and binary frame."""
    image_id = f"{job_id}.r{index}"
    return image_id, encode_frame({"image": image_id, "job": job_id, "role": "result", "format": image.format,
                                   "width": image.width, "height": image.height, "index": index}, image.data)


def result_image(layer: Layer, image: ImageData, *, frame: str | None = None) -> dict:
    """One entry of ``result.images``: the frame it travels in, or (``frame`` None) its base64 data inline."""
    item = {"index": layer.index, "seed": layer.seed, "width": image.width, "height": image.height,
            "offset": list(layer.offset), "format": image.format}
    if frame is None:
        item["data"] = image.to_base64()
    else:
        item["image"] = frame
    return item


def result(job: Job, run: EngineResult, images: list[dict], started: float, now: float) -> dict:
    """``result``: the images, the job as run, and where the time went (``started``, ``now``: perf_counter)."""
    timings = {"queued": round(started - job.submitted, 4), "load": round(run.load_seconds, 4),
               "run": round(run.run_seconds, 4), "total": round(now - job.submitted, 4)}
    return {"type": "result", "job": job.id, "images": images, "parameters": parameters(job, run),
            "timings": timings}


def parameters(job: Job, run: EngineResult) -> dict:
    """The job as run, for the ``result`` message: defaults filled, the seed resolved, the size made."""
    work = job.work
    if not isinstance(work, EditJob):
        return {"mode": "preprocess", "preprocessor": work.preprocessor, "resolution": work.resolution}
    out = {"mode": work.mode, "model": work.model, "prompt": work.prompt, "negative_prompt": work.negative_prompt,
           "seed": work.seed, "steps": work.steps, "guidance": work.guidance, "strength": work.strength,
           "batch": work.batch, "sampler": work.sampler, "mask_grow": work.mask_grow,
           "mask_feather": work.mask_feather, "seeds": seed_range(work.seed, work.batch)}
    if work.clip_skip is not None:
        out["clip_skip"] = work.clip_skip
    if work.mode == "generate":
        del out["strength"]
        out["width"], out["height"] = run.passes[0].box.width, run.passes[0].box.height
        if len(run.passes) > 1:  # above the native range: generated small, upscaled and refined
            out.update(refine=work.strength, upscaler=work.upscaler)
    if work.mode in ("inpaint", "remove", "expand"):
        out.update(fill=work.fill, soft_inpaint=work.soft)
        if work.mode != "expand":
            out["mask_padding"] = work.padding
    if work.mode == "instruct" and work.image_guidance is not None:
        out["image_guidance"] = work.image_guidance
    if work.mode == "instruct" and work.mask is not None:  # (its crop and edge are made as an inpaint's)
        out.update(mask_padding=work.padding, soft_inpaint=work.soft)
    if work.mode == "expand":
        out.update(zip(("expand_left", "expand_top", "expand_right", "expand_bottom"), work.expand))
    if work.mode == "upscale":
        out["refine"] = out.pop("strength")
        out.update(upscaler=work.upscaler, width=work.width, height=work.height,
                   scale=round(work.width / work.image.shape[1], 4))
    if work.references:
        out["references"] = [{"weight": r.weight, "mode": r.mode} for r in work.references]
    if work.loras:
        out["loras"] = [{"name": name, "weight": weight} for name, weight in work.loras]
    if work.preset:
        out["preset"] = work.preset
    asked = split_prompt(job.request.prompt)[0]  # the submit's own prompt, its <lora:> tags out
    if asked != work.prompt:  # a preset's template wrapped it: sent again with the preset, it is wrapped the same
        out.update(prompt=asked, encoded_prompt=work.prompt)
    if work.control:
        # (a unit's resolution changes the map its preprocessor makes: left out, a re-submit got another map)
        out["control"] = [{"type": u.type, "preprocess": u.preprocessor or "off", "scale": u.scale,
                           "start": u.start, "end": u.end,
                           **({"resolution": u.resolution} if u.resolution is not None else {})}
                          for u in work.control]
    return out


def error(exc: ProtocolError) -> dict:
    """A refusal (of a message, or of a job when ``exc.job`` is set)."""
    return exc.to_message()


def model_error(job_id: str, exc: ModelError) -> dict:
    """A job the engine could not serve; a control unit's field is named by its index (``control[1].type``)."""
    field = exc.field if exc.unit is None else f"control[{exc.unit}].{exc.field}"
    return error(ProtocolError(exc.code, exc.message, field, job_id))


def internal_error(job_id: str | None, exc: BaseException) -> dict:
    """A bug: the job (or the message, when ``job_id`` is None) fails, the server keeps serving."""
    if job_id is None:
        return error(ProtocolError("internal", f"the server failed on this message: {exc}"))
    return error(ProtocolError("internal", f"the job failed: {type(exc).__name__}: {exc}", None, job_id))


def out_of_memory(job: Job) -> dict:
    """The device ran out of memory on a job: say what it asked for and what to lower."""
    work = job.work
    if not isinstance(work, EditJob):
        return error(ProtocolError("out_of_memory", "the device ran out of memory running this preprocessor: "
                                   "send a smaller picture or a lower `resolution`", "resolution", job.id))
    asked = []
    if work.width and work.height:
        asked.append(f"{work.width}x{work.height}")
    elif work.image is not None:
        asked.append(f"a {work.image.shape[1]}x{work.image.shape[0]} picture")
    asked.append(f"batch {work.batch}")
    if work.control:
        asked.append(f"{len(work.control)} ControlNet unit(s)")
    if work.references:
        asked.append(f"{len(work.references)} reference(s)")
    return error(ProtocolError("out_of_memory", f"the device ran out of memory on this job ({', '.join(asked)}): "
                               "lower the size, the batch, or the number of ControlNets and references, and "
                               "submit again; the server freed the job's memory and goes on", "batch", job.id))


def cancelled(job_id: str, stage: str, reason: str | None = None) -> dict:
    """``cancelled``; ``stage`` is "queued" or "running"; ``reason`` when the client did not ask for it."""
    return {"type": "cancelled", "job": job_id, "while": stage} | ({"reason": reason} if reason else {})


def status(device: str, running: str | None, queued: list[str], queue_length: int, clients: int,
           loaded_models: list[str], ahead: list[int]) -> dict:
    return {"type": "status", "device": device, "running": running, "queued": queued, "ahead": ahead,
            "queue_length": queue_length, "clients": clients, "loaded_models": loaded_models}


def lora_list(loras: list[LoraDescription]) -> list[dict]:
    """LoRAs as ``welcome`` and ``models`` list them: name and family (null when the file does not say)."""
    return [{"name": lora.name, "family": lora.family} for lora in loras]


def models(default: str | None, descriptions: list[ModelDescription],
           upscalers: list[UpscalerDescription] = (), loras: list[LoraDescription] = (),
           presets: dict[str, Preset] | None = None, embeddings: list[dict] | None = None) -> dict:
    message = {"type": "models", "default": default, "models": [
        {"name": d.name, "family": d.family, "native_size": d.native_size, "inpaint_model": d.inpaint_model,
         "loaded": d.loaded, **({"prediction_type": d.prediction_type, "zero_terminal_snr": d.zero_terminal_snr}
                                if d.prediction_type is not None else {}),
         **({"capabilities": d.capabilities.to_wire()} if d.capabilities else {})}
        for d in descriptions]}
    if embeddings is not None:  # textual inversions by family
        message["embeddings"] = embeddings
    if upscalers:
        message["upscalers"] = [{"name": u.name, "scale": u.scale, "architecture": u.architecture,
                                 "loaded": u.loaded} for u in upscalers]
    message["loras"] = lora_list(loras)
    if presets is not None:
        message["presets"] = describe_presets(presets)
    return message
