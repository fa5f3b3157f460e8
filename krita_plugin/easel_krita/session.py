"""The Generate button's code, minus the widgets: read the document, queue the job, and put
results back as layers. The docker and the in-Krita tests both drive this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import host, pixels, placement, plan, protocol
from .qt import QObject, pyqtSignal, scaled_rgba

REFERENCE_SIDE = 512  # references are resized to the image encoder's 224 px anyway


@dataclass
class ControlLayer:
    """A layer the painter picked as a control unit."""

    node: object
    type: str = "lineart"
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = False


@dataclass
class ReferenceLayer:
    node: object
    weight: float = 1.0
    mode: str = "reference"


@dataclass
class LayerResult:
    """One result, converted to the document's format and placed on its canvas."""

    name: str
    seed: int
    x: int
    y: int
    width: int
    height: int
    data: bytes  # document pixel format
    rgba: bytes  # 8-bit sRGB RGBA, for thumbnails
    doc: object = None
    layer: object = None  # the inserted layer, once applied
    grow: tuple | None = None  # an expand's (left, top, right, bottom, old width, old height): grow the canvas
    parameters: dict = field(default_factory=dict)  # the server's account of the job (model, sampler ...)
    canvas: object = None  # host.Canvas: for a managed profile ``data`` is None until apply() converts it


@dataclass
class Pending:
    """A queued job: the document it reads from and writes to, and for a map, its source layer."""

    doc: object
    source: object = None


class Session(QObject):
    """Jobs of one docker (or one test) on one worker; forwards the worker's events for its jobs.

    ``accepted(job, jobs ahead in the server's queue)``, ``started(job, steps, width, height)`` (the
    denoising steps per image and the size the model works at), ``progress(job, step, total)``,
    ``preview(job, QImage)``, then one of ``finished(job, results)``, ``failed(job, sentence)``,
    ``cancelled(job)``; ``preprocessed(job, layer)`` for a map.
    """

    accepted = pyqtSignal(str, int)
    started = pyqtSignal(str, int, int, int)
    finished = pyqtSignal(str, object)
    failed = pyqtSignal(str, str)
    cancelled = pyqtSignal(str)
    progress = pyqtSignal(str, int, int)
    preview = pyqtSignal(str, object)
    preprocessed = pyqtSignal(str, object)

    def __init__(self, worker, parent=None):
        super().__init__(parent)
        self.worker = worker
        self.pending: dict[str, Pending] = {}
        worker.job_event.connect(self._on_event)

    # -- generate -----------------------------------------------------------------------------

    def generate(self, doc, settings: plan.Settings, controls: list[ControlLayer] = (),
                 references: list[ReferenceLayer] = ()) -> str:
        """Read what the job needs from ``doc`` (UI thread) and queue it. Returns the job id.

        Raises plan.PlanError / pixels.UnsupportedColor (sentences) before anything is queued.
        """
        if self.worker.state != "connected":
            raise plan.PlanError(self.worker.not_ready())
        plan.check_prompt(settings, references)  # answer at once, before reading pixels
        info = host.canvas(doc)
        host.flush(doc)
        if any(settings.expand):
            region = plan.plan_expand(info.width, info.height, settings.expand)
        else:
            region = plan.plan_region(info.width, info.height, settings.strength,
                                      self.worker.native_size(settings.model), host.selection(doc),
                                      grow=settings.mask_grow, feather=settings.mask_feather,
                                      remove=settings.remove)
        box = region.box
        # Reads from Krita stay on this (UI) thread; conversion and encoding go to the worker.
        # A profile with other primaries is converted by Krita here (it must be the UI thread).
        image = _read(info, host.image_pixels(doc, box), box) if region.mode != "generate" else None
        mask = host.selection_bytes(doc, box) if region.mode in plan.MASKED else None
        control_reads = [(unit, _read(info, host.layer_pixels(unit.node, box), box)) for unit in controls]
        reference_reads = []
        for ref in references:
            bounds = host.layer_bounds(doc, ref.node)
            reference_reads.append((ref, bounds, _read(info, host.layer_pixels(ref.node, bounds), bounds)))
        settings = plan.Settings(**vars(settings))
        depth, linear = info.depth, info.linear

        def to_rgba(data):
            return data.rgba if isinstance(data, _Converted) else pixels.to_rgba8(data, depth, linear)

        def picture(data):
            """Document pixels of the box -> RGBA of the region's picture size (on the worker)."""
            rgba = to_rgba(data)
            if region.resampled:
                rgba = scaled_rgba(rgba, box.width, box.height, *region.picture)
            return rgba

        def build() -> plan.Job:
            rgba = picture(image) if image is not None else None
            units = [plan.ControlUnit(u.type, plan.raw_image(picture(data), *region.picture, "rgba8",
                                                             f"{u.type} control layer"),
                                      "on" if u.preprocess else "off", u.scale, u.start, u.end)
                     for u, data in control_reads]
            refs = []
            for ref, bounds, data in reference_reads:
                ref_rgba, w, h = _shrink(to_rgba(data), bounds.width, bounds.height)
                refs.append(plan.Reference(plan.raw_image(ref_rgba, w, h, "rgba8", "reference layer"),
                                           ref.weight, ref.mode))
            return plan.build_job(region, settings, rgba, mask, units, refs)

        default_model = (self.worker.models or {}).get("default")

        def finish(result):
            out = []
            model = result.parameters.get("model")
            named = model if model and model != default_model else None
            for item in result.images:
                image_data = item.image
                spot = placement.place(region, item.offset, image_data.width, image_data.height)
                rgba = image_data.data
                grow = None
                if region.mode == "expand":  # the layer holds the new band; the picture stays in its layers
                    grow = (*settings.expand, info.width, info.height)
                    rgba = placement.band_only(rgba, image_data.width, *settings.expand[:2], info.width,
                                               info.height)
                if spot.scale:
                    rgba = scaled_rgba(rgba, image_data.width, image_data.height, spot.width, spot.height)
                out.append(LayerResult(placement.layer_name(settings.prompt, item.seed, model=named), item.seed,
                                       spot.x, spot.y, spot.width, spot.height,
                                       _write(info, rgba), rgba, doc, grow=grow, parameters=result.parameters,
                                       canvas=info))
            return out

        job = self.worker.submit(build, finish)
        self.pending[job] = Pending(doc)
        return job

    def cancel(self, job: str) -> None:
        self.worker.cancel(job)

    # -- results ------------------------------------------------------------------------------

    @staticmethod
    def apply(result: LayerResult):
        """Insert ``result`` as a new layer in its document's Easel group; returns the layer. An expand's
        result first grows the canvas (once: a document already grown is left as it is)."""
        if result.grow is not None:
            host.grow_canvas(result.doc, *result.grow)
        _converted_back(result)
        result.layer = host.insert_layer(result.doc, result.name, result.data, result.x, result.y,
                                         result.width, result.height)
        return result.layer

    # -- preprocess ---------------------------------------------------------------------------

    def preprocess_layer(self, doc, node, control_type: str) -> str:
        """Make a control map of ``node`` on the server; ``preprocessed(job, layer)`` when inserted."""
        if self.worker.state != "connected":
            raise plan.PlanError(self.worker.not_ready())
        offer = self.worker.offer
        if offer.preprocessor(control_type) is None:
            raise plan.PlanError(offer.why_no_preprocessor(control_type))
        info = host.canvas(doc)
        side = offer.max_side
        if max(info.width, info.height) > side:  # the whole canvas goes, so the server's limit is the canvas's
            raise plan.PlanError(f"The canvas is {info.width}x{info.height}: the server makes maps of pictures up "
                                 f"to {side} pixels a side.")
        host.flush(doc)
        box = plan.Box(0, 0, info.width, info.height)  # the whole canvas, so the map lines up
        data = _read(info, host.layer_pixels(node, box), box)
        depth, linear = info.depth, info.linear
        name = f"{control_type} map of {node.name()}"

        def build():
            rgba = data.rgba if isinstance(data, _Converted) else pixels.to_rgba8(data, depth, linear)
            return protocol.images.ImageData("rgba8", box.width, box.height, rgba)

        def finish(result):
            image = result
            if image.format != "rgba8":  # preprocess answers PNG unless asked otherwise
                from .qt import QImage, image_bytes
                rgba = image_bytes(QImage.fromData(image.data))
            else:
                rgba = image.data
            return LayerResult(name, 0, 0, 0, image.width, image.height, _write(info, rgba), rgba, doc, canvas=info)

        job = self.worker.preprocess(control_type, build, finish)
        self.pending[job] = Pending(doc, source=node)
        return job

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, job: str, kind: str, payload) -> None:
        pending = self.pending.get(job)
        if pending is None:
            return
        if kind == "accepted":
            self.accepted.emit(job, payload)
        elif kind == "started":
            steps, (width, height) = payload
            self.started.emit(job, steps, width, height)
        elif kind == "progress":
            self.progress.emit(job, *payload)
        elif kind == "preview":
            self.preview.emit(job, payload)
        elif kind == "result":
            del self.pending[job]
            if pending.source is not None:  # a control map: goes just above the layer it was made of
                source = pending.source
                _converted_back(payload)
                layer = host.insert_layer(pending.doc, payload.name, payload.data, 0, 0, payload.width,
                                          payload.height, parent=source.parentNode(), above=source)
                self.preprocessed.emit(job, layer)
            else:
                self.finished.emit(job, payload)
        elif kind == "error":
            del self.pending[job]
            self.failed.emit(job, payload)
        elif kind == "cancelled":
            del self.pending[job]
            self.cancelled.emit(job)


@dataclass
class _Converted:
    """Pixels already converted to 8-bit sRGB RGBA by Krita (a managed profile)."""

    rgba: bytes


def _read(info, data: bytes, box) -> bytes | _Converted:
    """What was read from the document, converted by Krita now when its profile needs that (UI thread)."""
    rgba = info.to_rgba8(data, box.width, box.height)
    return data if rgba is None else _Converted(rgba)


def _write(info, rgba: bytes) -> bytes | None:
    """A result in the document's format (on the worker); None for a managed profile: apply() converts it."""
    return None if info.managed else pixels.from_rgba8(rgba, info.depth, info.linear)


def _converted_back(result: LayerResult) -> None:
    if result.data is None:
        result.data = result.canvas.from_rgba8(result.rgba, result.width, result.height)


def _shrink(rgba: bytes, width: int, height: int) -> tuple[bytes, int, int]:
    """Scale a reference down to REFERENCE_SIDE on its longest side (it is tiny to the encoder)."""
    side = max(width, height)
    if side <= REFERENCE_SIDE:
        return rgba, width, height
    w, h = max(1, round(width * REFERENCE_SIDE / side)), max(1, round(height * REFERENCE_SIDE / side))
    return scaled_rgba(rgba, width, height, w, h), w, h
