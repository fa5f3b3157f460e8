"""The Easel tab's gradio UI. Logic lives in ``params`` and ``jobs``; this wires components to it.

No ``from __future__ import annotations`` here: gradio finds ``gr.Request`` / ``gr.SelectData``
parameters by their (real, not string) annotations.
"""

from dataclasses import dataclass, fields
from typing import Callable

import gradio as gr

from . import compat, jobs
from .params import (
    DEFAULT_SAMPLER,
    MASKED_CONTENT,
    OWN_IMAGE,
    SAMPLER_LABELS,
    TAB_MODES,
    USE_INPUT,
    ControlSpec,
    ReferenceSpec,
    TabValues,
    guidance_note,
    mask_to_send,
    model_offer,
    pnginfo_mode,
    sampler_from_infotext,
    saving_fields,
    seed_from_infotext,
    sent_mode,
    with_lora,
    within_offer,
)
from .protocol import SAMPLERS, capabilities, model_list, rules

Offer, offer = capabilities.Offer, capabilities.offer

CONTROL_UNITS = 3
# px: a field that shares a row with another takes at least this: in a narrow window (800 px) the two go one
# under the other, not side by side with their labels wrapped into three or four lines
PAIRED = 220
REFERENCES = 2
# Each unit / reference is a run of components in its dataclass's field order.
UNIT_SIZE, REFERENCE_SIZE = len(fields(ControlSpec)), len(fields(ReferenceSpec))


@dataclass
class Host:
    """What the WebUI adds to the tab; each is optional (a bare gradio app has none)."""

    # (image, infotext components) -> None: "Send to" buttons, created inside a Row
    send_buttons: Callable | None = None
    # (picture, [(component, infotext key or callable(parsed infotext) -> value or None)]) -> None:
    # what "Send to Easel" fills
    paste_fields: Callable | None = None
    # (picture, infotext, mode, ``params.saving_fields``) -> None: keep a result as the WebUI keeps its own
    save: Callable | None = None
    # (picture, mask) components of the WebUI's inpaint upload, and the page script that shows them
    inpaint_upload: tuple | None = None
    show_inpaint_upload: str = ""
    # the WebUI tab ("txt2img", "img2img") -> its "Send to Easel" button, which also sets the Mode; and the
    # page script that puts img2img's mode tab index (0 img2img ... 4 inpaint upload) first in its inputs
    sent_from: dict | None = None
    img2img_tab: str = ""
    # PNG Info's (Send to Easel button, infotext box): the button also sets the Mode of a picture not Easel's
    pnginfo: tuple | None = None
    # (a field's label) -> the value Settings > Defaults saved for it (ui-config.json), or None
    saved_default: Callable | None = None


class Models:
    """The model picker's labels and the models they stand for, and what the backend offers (its ``offer``:
    control types, reference modes, LoRAs …), as the backend last said (gradio 3's Dropdown has no separate
    values: the label is the value)."""

    def __init__(self, offered: jobs.Offered):
        self.update(offered)

    def update(self, offered: jobs.Offered) -> None:
        self.labels = model_list.picker_labels(offered.models, offered.capabilities)
        self.reply = offered.models
        self.offer = offer(offered.capabilities)

    def chosen(self, label: str | None) -> model_list.ModelChoice | None:
        """The model a job with this label runs on (the server's default for "Server default")."""
        return model_list.chosen(self.reply, self.name(label))

    def name(self, label: str | None) -> str:
        """The model a label stands for (by its name, for a label written from an earlier offer); "" (the
        server's default) for one no longer listed."""
        return model_list.name_for(self.labels, label) or ""

    def label(self, name: str | None) -> str:
        return model_list.label_for(self.labels, name)


def build(connection: Callable[[], jobs.Connection], host: Host | None = None) -> gr.Blocks:
    """The tab as a ``gr.Blocks``; ``connection()`` is read at every request (settings may change).

    The models, control types, reference modes and limits are the backend's when it answers now; a
    backend started later gets the protocol's whole vocabulary (and refuses what it lacks with a
    sentence) until its models are refreshed.
    """
    host = host or Host()
    units, refs = [], []
    backend = jobs.offered(connection())
    offered = offer(backend.capabilities)  # the fields' ranges and choices; ``models.offer`` follows the backend
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            status = gr.Markdown(lambda: jobs.status_markdown(connection()), elem_id="easel_status")
            refresh = gr.Button("Check backend", elem_id="easel_refresh", scale=0, size="sm")
        with gr.Row():
            models = Models(backend)
            # A model saved in Settings > Defaults, by its name: the WebUI keeps a saved value only while it is
            # one of the choices, and the saved label describes the offer of its day (a ControlNet added since
            # changes it). One the backend does not list now (not started yet) is picked once it does.
            saved = host.saved_default("Model") if host.saved_default else None
            saved = saved if isinstance(saved, str) else None
            picked = model_list.name_for(models.labels, saved)
            start = model_offer(models.chosen(models.label(picked)), offered)  # what that model takes
            model = gr.Dropdown(list(models.labels), value=models.label(picked), label="Model",
                                elem_id="easel_model")
            # (per page, until picked; a model the painter picked meanwhile stays)
            saved_model = gr.State(saved if picked is None else None)
            # the WebUI's refresh symbol, as beside its checkpoint list, and its small square "tool" look (a
            # plain button was as tall as the whole dropdown and four times as wide)
            refresh_models = gr.Button("\U0001f504", elem_id="easel_model_refresh", scale=0, elem_classes=["tool"])
        with gr.Row():
            with gr.Column(scale=1):
                picture = compat.picture_editor("Picture (paint over what should change)", "easel_picture")
                # value="": the WebUI's infotext paste ("Send to Easel" from PNG Info) converts a pasted value
                # to the type of the field's value, and gradio 4 leaves a Textbox's at None (nothing pasted).
                # class "prompt": the WebUI's Ctrl+Up/Down (edit-attention.js) weights the words at the cursor,
                # as in its own prompt fields
                prompt = gr.Textbox("", label="Prompt", lines=2, elem_id="easel_prompt", elem_classes=["prompt"])
                negative = gr.Textbox("", lines=1, elem_id="easel_negative", elem_classes=["prompt"],
                                      **negative_prompt(start.negative_prompt))
                # The WebUI's LoRA cards add a tag to the prompt; the tab has no cards, and a painter could not
                # otherwise learn which LoRAs the server has. Only those made for the picked model's family.
                lora = gr.Dropdown(list(start.loras), value=None, elem_id="easel_lora", visible=bool(start.loras),
                                   label="LoRA (adds its <lora:name:1> tag to the prompt)")
                lora.do_not_save_to_config = True  # a picker, not a setting
                mode = gr.Radio(list(start.modes), value=first_mode(start.modes, "inpaint"), label="Mode",
                                elem_id="easel_mode")
                with gr.Row():
                    strength = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Strength", elem_id="easel_strength",
                                         min_width=PAIRED)
                    steps = gr.Slider(1, offered.max_steps, value=min(20, offered.max_steps), step=1,
                                      label="Steps", elem_id="easel_steps", min_width=PAIRED)
                with gr.Row():
                    # 0 is auto, the model's own (a Flux Fill inpaint wants 30, SD 7): one fixed default ran
                    # every family at SD's 7, and a default that followed the model would be saved as a fixed
                    # number by the WebUI's ui-config.json at its first start. The note says what auto is.
                    guidance = gr.Slider(0.0, 30.0, value=0.0, step=0.5, label="CFG scale (0: auto)",
                                         info=guidance_note(models.chosen(model.value), mode.value),
                                         elem_id="easel_cfg", min_width=PAIRED)
                    sampler = gr.Dropdown([SAMPLER_LABELS[name] for name in SAMPLERS], value=DEFAULT_SAMPLER,
                                          label="Sampling method", elem_id="easel_sampler", min_width=PAIRED)
                # instruct: the prompt is the instruction, CFG scale how strongly it is followed
                image_guidance = gr.Slider(1.0, 20.0, value=rules.IMAGE_GUIDANCE, step=0.05,
                                           label="Image guidance", info="how closely the edit keeps to the picture",
                                           elem_id="easel_image_guidance", visible=start.image_guidance)
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="easel_seed")
                    # the WebUI's own pair beside its seed: a random seed again, and the shown result's seed
                    # (the field stays -1 after a random one, which the painter may want to keep)
                    random_seed = gr.Button("\U0001f3b2\ufe0f", elem_id="easel_random_seed", scale=0,
                                            elem_classes=["tool"])
                    reuse_seed = gr.Button("\u267b\ufe0f", elem_id="easel_reuse_seed", scale=0, elem_classes=["tool"])
                    batch = gr.Slider(1, offered.max_batch, value=1, step=1, label="Batch", elem_id="easel_batch",
                                      min_width=PAIRED)
                with gr.Row():
                    grow = gr.Slider(0, 256, value=rules.MASK_GROW, step=1, label="Mask grow", elem_id="easel_grow",
                                     min_width=PAIRED)
                    feather = gr.Slider(0, 256, value=rules.MASK_FEATHER, step=1, label="Mask feather",
                                        elem_id="easel_feather", min_width=PAIRED)
                # Two by two: four in one row squeezed the padding slider's label into four lines on a narrow
                # window, and the checkboxes wrapped apart.
                with gr.Row():
                    masked_content = gr.Dropdown(list(MASKED_CONTENT), value="mode's default",
                                                 label="Masked content", elem_id="easel_fill", min_width=PAIRED)
                    padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                        elem_id="easel_padding", min_width=PAIRED)
                with gr.Row():
                    soft = gr.Checkbox(True, label="Soft inpainting", elem_id="easel_soft")
                    invert = gr.Checkbox(False, label="Invert mask", elem_id="easel_invert")
                with gr.Accordion("Expand (outpaint)", open=False, elem_id="easel_expand"):
                    # left and right, then top and bottom (in four columns the fourth wrapped alone below)
                    expand = {}
                    for pair in (("left", "right"), ("top", "bottom")):
                        with gr.Row():
                            for name in pair:
                                expand[name] = gr.Slider(0, rules.MAX_EXPAND, value=0, step=8, label=f"Expand {name}",
                                                         elem_id=f"easel_expand_{name}", min_width=PAIRED)
                    sides = [expand[name] for name in ("left", "top", "right", "bottom")]
                with gr.Row():
                    side = offered.max_generate_side
                    width = gr.Slider(64, side, value=min(512, side), step=8, label="Width (generate)",
                                      elem_id="easel_width", min_width=PAIRED)
                    height = gr.Slider(64, side, value=min(512, side), step=8, label="Height (generate)",
                                       elem_id="easel_height", min_width=PAIRED)
                with gr.Row():
                    # the WebUI's own short label; the rest in its note (as one label it wrapped into four lines)
                    upscale_by = gr.Slider(1.0, 8.0, value=2.0, step=0.25, label="Upscale by",
                                           info="upscale mode; Strength below 1 refines", elem_id="easel_upscale_by",
                                           min_width=PAIRED)
                    upscalers = offered.upscalers or ("lanczos",)
                    upscaler = gr.Dropdown(list(upscalers), value=upscalers[min(1, len(upscalers) - 1)],
                                           label="Upscaler", elem_id="easel_upscaler", min_width=PAIRED)
                unit_boxes, ref_boxes = [], []
                for number in range(1, CONTROL_UNITS + 1):
                    units.append(_control_unit(number, picture, connection, offered, unit_boxes,
                                               bool(start.control_types)))
                for number in range(1, REFERENCES + 1):
                    refs.append(_reference(number, offered, ref_boxes, bool(start.reference_modes)))
            with gr.Column(scale=1):
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="easel_generate")
                    # The WebUI's script.js finds the current tab's `*_interrupt` and `*_skip` buttons for
                    # Esc / Ctrl+Enter / Alt+Enter; javascript/easel.js shows Cancel while a job runs.
                    cancel = gr.Button("Cancel", elem_id="easel_interrupt")
                    gr.Button("Skip", elem_id="easel_skip", elem_classes=["easel-skip"])  # nothing to skip: no handler
                progress = gr.Markdown("", elem_id="easel_progress")
                preview = gr.Image(label="Live preview", type="pil", interactive=False, height=256,
                                   elem_id="easel_preview", **compat.LOSSLESS)
                gallery = gr.Gallery(label="Results", columns=4, height="auto", elem_id="easel_gallery",
                                     **compat.LOSSLESS)
                selected = gr.Image(label="Selected result", type="pil", interactive=False, height=256,
                                    elem_id="easel_selected", **compat.LOSSLESS)
                info = gr.Textbox(label="Parameters used", lines=3, interactive=False, elem_id="easel_info")
                # An output: the WebUI's Settings > Defaults would otherwise save the last job's parameters
                # as the text this box starts with.
                info.do_not_save_to_config = True
                if host.send_buttons is not None:
                    with gr.Row():
                        host.send_buttons(selected, info)
                        if host.inpaint_upload is not None:
                            with_mask = gr.Button("Send to inpaint upload (with the mask)",
                                                  elem_id="easel_send_to_inpaint_upload")
        images, texts = gr.State([]), gr.State([])

        controls_in = [c for unit in units for c in unit]
        refs_in = [c for ref in refs for c in ref]
        inputs = [picture, prompt, negative, mode, strength, steps, guidance, sampler, seed, batch, grow, feather,
                  width, height, *controls_in, *refs_in, masked_content, soft, invert, *sides, padding,
                  upscale_by, upscaler, model, image_guidance]
        toolbox = 8  # the toolbox's components, last in ``inputs`` but the upscale's two, the model and guidance

        def values_of(args) -> TabValues:
            (pic, prompt_, negative_, mode_, strength_, steps_, guidance_, sampler_, seed_, batch_, grow_,
             feather_, width_, height_) = args[:14]
            rest, (content_, soft_, invert_, *sides_, padding_) = args[14:-toolbox - 4], args[-toolbox - 4:-4]
            scale_, upscaler_, model_, image_guidance_ = args[-4:]
            image, painted = compat.read_editor(pic)
            controls = [ControlSpec(*rest[i * UNIT_SIZE:(i + 1) * UNIT_SIZE]) for i in range(CONTROL_UNITS)]
            rest = rest[CONTROL_UNITS * UNIT_SIZE:]
            references = [ReferenceSpec(*rest[i * REFERENCE_SIZE:(i + 1) * REFERENCE_SIZE])
                          for i in range(REFERENCES)]
            values = TabValues(mode_, image, painted, prompt_ or "", negative_ or "", strength_, int(steps_),
                               guidance_, sampler_, int(seed_ if seed_ is not None else -1), int(batch_),
                               int(grow_), int(feather_), int(width_), int(height_), controls, references,
                               content_, bool(soft_), bool(invert_), *(int(value or 0) for value in sides_),
                               int(padding_ if padding_ is not None else 32), float(scale_), upscaler_ or "",
                               models.name(model_), float(image_guidance_), models.chosen(model_))
            return within_offer(values, model_offer(values.chosen, models.offer))

        def run_job(request: gr.Request, *args):
            # gradio fills positional parameters annotated gr.Request; the inputs follow in *args.
            keep = gr.update()
            values = values_of(args)
            for update in jobs.run(connection(), values, _session(request)):
                if update.images and host.save is not None:
                    for index, (image, text) in enumerate(zip(update.images, update.infotexts)):
                        made = saving_fields(values, update.seeds, index, update.guidance, update.sampler)
                        host.save(image, text, values.mode, made)
                if update.images is None:
                    preview_ = keep if update.preview is None else update.preview
                    yield (jobs.markdown(update.status, update.failed, not update.done), preview_, keep, keep, keep,
                           keep, keep)
                else:
                    yield (jobs.markdown(update.status, update.failed), keep, update.images, update.images,
                           update.infotexts, update.images[0] if update.images else None,
                           update.infotexts[0] if update.infotexts else "")

        def pick(images_, texts_, evt: gr.SelectData):
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            if not images_ or index >= len(images_):
                return gr.update(), gr.update()
            return images_[index], texts_[index]

        def cancel_job(request: gr.Request):
            # While a job runs, its own events end in "Cancelled."; writing here could race that.
            said = jobs.cancel(_session(request))
            return gr.update() if said is None else jobs.markdown(said.status, said.failed,
                                                                  busy=jobs.busy(_session(request)))

        def page_closed(request: gr.Request):
            jobs.cancel(_session(request))  # (its job's events had nobody left to show them to)

        compat.when_page_closes(tab, page_closed)
        ran = generate.click(run_job, inputs=inputs,
                       outputs=[progress, preview, gallery, images, texts, selected, info], **compat.CONCURRENT)
        # Not queued: it must get through while the generate event holds the queue.
        cancel.click(cancel_job, inputs=None, outputs=[progress], queue=False)
        gallery.select(pick, inputs=[images, texts], outputs=[selected, info])

        def reuse(text):
            found = seed_from_infotext(text)
            if found is None:
                return gr.update(), "No result to take the seed from yet: generate one first."
            return found, gr.update()

        def add_lora(prompt_, picked):
            if not picked:
                return gr.update(), gr.update()
            return with_lora(prompt_ or "", picked), gr.update(value=None)

        # (input: the painter's pick only, not the reset to nothing that follows it)
        lora.input(add_lora, inputs=[prompt, lora], outputs=[prompt, lora], queue=False)
        random_seed.click(lambda: -1, inputs=None, outputs=[seed], queue=False)
        reuse_seed.click(reuse, inputs=[info], outputs=[seed, progress], queue=False)
        def refresh_backend(current, saved_):
            picked = models.name(current)
            models.update(jobs.offered(connection()))
            listed = model_list.name_for(models.labels, saved_) if saved_ else None
            if listed and not picked:  # the saved default, now listed, while the picker still says the server's
                picked, saved_ = listed, None
            return (jobs.status_markdown(connection()),
                    gr.update(choices=list(models.labels), value=models.label(picked)), saved_)

        if host.send_buttons is not None and host.inpaint_upload is not None:
            def send_with_mask(result, pic, invert_):
                image, painted = compat.read_editor(pic)
                mask = mask_to_send(result, TabValues(picture=image, mask=painted, invert_mask=bool(invert_)))
                return result, mask

            with_mask.click(send_with_mask, inputs=[selected, picture, invert], outputs=list(host.inpaint_upload),
                            **compat.run_script(host.show_inpaint_upload))

        def offer_model(label, mode_, displaced):
            # Only what the picked model can use: its modes, ControlNet units and references where it takes
            # them (else hidden, and left out of its jobs by ``within_offer``), its negative prompt (else greyed
            # out, and left out too) and image guidance. What is hidden or greyed out keeps its value, and the
            # mode the painter last chose comes back with a model that has it: switching to a model and back
            # loses nothing. (A unit's type or a reference's mode it lacks is refused with a sentence instead.)
            can = model_offer(models.chosen(label), models.offer)
            controls, references = bool(can.control_types), bool(can.reference_modes)
            # ``displaced``: (the mode a model took off the radio, the one it showed instead); the radio still
            # showing the latter means the painter has not chosen since
            wanted, forced = displaced or (None, None)
            preferred = wanted if wanted and mode_ == forced else mode_
            shown = first_mode(can.modes, preferred)
            updates = [gr.update(choices=list(can.modes), value=shown),
                       (preferred, shown) if shown != preferred else None,
                       gr.update(**negative_prompt(can.negative_prompt)),
                       gr.update(visible=can.image_guidance),
                       gr.update(info=guidance_note(models.chosen(label), shown))]
            for _ in units:
                updates.append(gr.update(visible=controls))
            return updates + [gr.update(visible=references) for _ in refs] + [
                gr.update(choices=list(can.loras), value=None, visible=bool(can.loras))]

        # (not the Radio's input event: gradio 4 sends it for the model's own update of the radio too)
        wanted_mode = gr.State(None)
        offer_fields = dict(fn=offer_model, inputs=[model, mode, wanted_mode], queue=False,
                            outputs=[mode, wanted_mode, negative, image_guidance, guidance, *unit_boxes, *ref_boxes,
                                     lora])
        model.change(**offer_fields)
        mode.change(lambda label, mode_: gr.update(info=guidance_note(models.chosen(label), mode_)),
                    inputs=[model, mode], outputs=[guidance], queue=False)
        # then the fields again: a backend started after the WebUI, another one set in Settings, a LoRA added
        # to its folder (the picked model's label, and so its change event, may stay the same). After each job
        # too: one that reached a backend started (or restarted) since left the status line saying it could not.
        for event in (refresh.click, refresh_models.click, ran.then):
            event(refresh_backend, inputs=[model, saved_model], outputs=[status, model, saved_model],
                  queue=False).then(**offer_fields)
        # The painter's own pick, "Server default" too, stands for the page's life: the saved default no longer
        # waits. (select, not input: gradio 4 sends input for the refresh's update as well, select only for a pick.)
        model.select(lambda: None, inputs=None, outputs=[saved_model], queue=False)
        if host.sent_from:
            sent_tab = gr.Number(value=-1, visible=False, elem_id="easel_sent_tab")  # for the page script
            sent_tab.do_not_save_to_config = True

            def land(source):
                def landed(tab_, label, mode_, strength_):
                    index = int(tab_) if tab_ is not None and tab_ >= 0 and source == "img2img" else None
                    wanted, strength_ = sent_mode(source, index, mode_, float(strength_))
                    return first_mode(model_offer(models.chosen(label), models.offer).modes, wanted), strength_
                return landed

            for source, button in host.sent_from.items():
                script = host.img2img_tab if source == "img2img" else ""
                button.click(land(source), inputs=[sent_tab, model, mode, strength], outputs=[mode, strength],
                             queue=False, **compat.run_script(script))
        if host.pnginfo:
            def land_pnginfo(text, label, mode_):
                # an Easel result's own mode is the paste's (below); only the other pictures' is set here
                wanted = pnginfo_mode(text, mode_)
                return gr.update() if wanted is None else first_mode(
                    model_offer(models.chosen(label), models.offer).modes, wanted)

            button, text = host.pnginfo
            button.click(land_pnginfo, inputs=[text, model, mode], outputs=[mode], queue=False)
        if host.paste_fields is not None:
            host.paste_fields(picture, [
                (prompt, "Prompt"), (negative, "Negative prompt"), (steps, "Steps"),
                # another model's CFG scale (a WebUI picture's 7) would run a Flux Fill inpaint at 7, not its 30:
                # such a picture's infotext sets auto; an Easel result's brings back the guidance it ran at
                (guidance, lambda params: params.get("CFG scale") if params.get("Model") in models.labels.values()
                 else 0.0),
                (seed, "Seed"), (sampler, sampler_from_infotext), (width, "Size-1"), (height, "Size-2"),
                (strength, "Denoising strength"), (image_guidance, "Image CFG scale"),
                (upscale_by, "Postprocess upscale by"),
                (upscaler, lambda params: params.get("Postprocess upscaler") if params.get("Postprocess upscaler")
                 in upscalers else None),
                (model, lambda params: models.label(params["Model"]) if params.get("Model") in
                 models.labels.values() else None),
                # an Easel result's own mode (PNG Info); a model without it gets its own (``offer_model``)
                (mode, lambda params: params.get("Easel mode") if params.get("Easel mode") in TAB_MODES else None),
                # the mask's shaping and context as the result ran with them: else a pasted inpaint reran with
                # whatever the sliders held (other pixels from the same seed)
                (grow, "Easel mask grow"), (feather, "Mask blur"), (soft, "Easel soft inpainting"),
                (masked_content, lambda params: next((label for label, fill in MASKED_CONTENT.items()
                                                      if fill and fill == params.get("Easel fill")), None)),
                # (the WebUI's parse says "Masked area padding: 32" of every picture that names none)
                (padding, lambda params: params.get("Masked area padding")
                 if params.get("Inpaint area") == "Only masked" else None),
                *((slider, lambda params, side=side: _expand_side(params, side)) for side, slider in enumerate(sides))])
    return tab


def _expand_side(params: dict, side: int) -> str | None:
    """One side (left, top, right, bottom) of an Easel result's ``Easel expand: "l, t, r, b"``."""
    values = str(params.get("Easel expand") or "").split(",")
    return values[side].strip() if len(values) == 4 else None


def first_mode(modes, current: str) -> str:
    """The mode the radio shows: ``current`` while offered, else the model's own kind of edit."""
    return capabilities.pick(modes, current, next((name for name in modes if name != "upscale"), "upscale"))


def negative_prompt(takes: bool) -> dict:
    """The negative prompt's label and whether it can be typed in, for a model that takes one or not."""
    return {"label": "Negative prompt" if takes else "Negative prompt (this model takes none)", "interactive": takes}


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "default"


def _control_unit(number: int, picture, connection, offered: Offer, boxes: list, visible: bool) -> list:
    """A unit's components, in ``ControlSpec`` field order (its accordion added to ``boxes``); hidden when
    the model has no ControlNet."""
    # Hidden, not left out: the Generate inputs are a fixed run of components per unit.
    types = offered.control_types or Offer().control_types
    with gr.Accordion(f"ControlNet unit {number}", open=False, elem_id=f"easel_cn{number}",
                      visible=visible) as box:
        boxes.append(box)
        with gr.Row():
            enabled = gr.Checkbox(False, label=f"Enable unit {number}", elem_id=f"easel_cn{number}_enabled")
            kind = gr.Dropdown(list(types), value=capabilities.pick(types, "canny", "canny") or None,
                               label=f"Unit {number} type", elem_id=f"easel_cn{number}_type")
            source = gr.Radio([USE_INPUT, OWN_IMAGE], value=USE_INPUT, label=f"Unit {number} control image",
                              elem_id=f"easel_cn{number}_source")
        with gr.Row():
            image = compat.image_input(f"Unit {number} own image (a map, or a picture to preprocess)",
                                       f"easel_cn{number}_image")
            preview = gr.Image(label=f"Unit {number} map preview", type="pil", interactive=False,
                               elem_id=f"easel_cn{number}_map", **compat.LOSSLESS)
        with gr.Row():
            preprocess = gr.Checkbox(False, label=f"Unit {number}: preprocess (make the map from the image)",
                                     elem_id=f"easel_cn{number}_pre")
            show = gr.Button(f"Preview map {number}", elem_id=f"easel_cn{number}_show", scale=0)
        message = gr.Markdown("", elem_id=f"easel_cn{number}_message")
        # the scale on its own line, start and end paired (three in a row wrapped two and one, labels broken)
        scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label=f"Unit {number} scale",
                          elem_id=f"easel_cn{number}_scale")
        with gr.Row():
            start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label=f"Unit {number} start",
                              elem_id=f"easel_cn{number}_start", min_width=PAIRED)
            end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label=f"Unit {number} end", elem_id=f"easel_cn{number}_end",
                            min_width=PAIRED)

    def show_map(kind_, source_, own, pic):
        chosen = own if source_ == OWN_IMAGE else compat.read_editor(pic)[0]
        map_, message_ = jobs.preprocess(connection(), kind_, chosen)
        return map_, jobs.markdown(message_, map_ is None)

    show.click(show_map, inputs=[kind, source, image, picture], outputs=[preview, message], **compat.CONCURRENT)
    return [enabled, kind, source, image, preprocess, scale, start, end]


def _reference(number: int, offered: Offer, boxes: list, visible: bool) -> list:
    """A reference's components, in ``ReferenceSpec`` field order (its accordion added to ``boxes``);
    hidden when the model has no IP-Adapter."""
    modes = offered.reference_modes or Offer().reference_modes
    with gr.Accordion(f"Reference {number}", open=False, elem_id=f"easel_ref{number}",
                      visible=visible) as box:
        boxes.append(box)
        image = compat.image_input(f"Reference {number} picture", f"easel_ref{number}_image")
        with gr.Row():
            weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label=f"Reference {number} weight",
                               elem_id=f"easel_ref{number}_weight", min_width=PAIRED)
            mode = gr.Radio(list(modes), value=capabilities.pick(modes, "reference", "reference") or None,
                            label=f"Reference {number} takes", elem_id=f"easel_ref{number}_mode", min_width=PAIRED)
    return [image, weight, mode]
