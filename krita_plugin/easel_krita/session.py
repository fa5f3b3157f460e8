"""The Generate button's code, minus the widgets: read the document, queue the job, and put
results back as layers. The docker and the in-Krita tests both drive this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import host, pixels, placement, plan, protocol, turns
from .qt import QObject, QTimer, pyqtSignal, scaled_rgba
from .turns import ALONE
from .worker import sentence

PAPER = 255  # what the transparent parts of a picture layer (a sketch, a reference) are laid on: white
REFERENCE_SIDE = 512  # references are resized to the image encoder's 224 px anyway
SLICE_S = 0.03  # UI-thread work per event-loop turn when reading or inserting in strips
SLICES_KEPT = 1000
# Not 0: a 0 ms single shot is a posted event, which Qt's event loop runs back to back with the next
# turn before the timers and input that fell due during the first (seen here as one 0.39 s UI block
# for a 0.16 s and a 0.23 s turn); a timer 1 ms away lets one full pass of the loop run in between.
NEXT_TURN_MS = 1


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
    resize: tuple | None = None  # an upscale's (old width, old height): scale the document to the result first
    # An upscale into a new document: its (name, resolution), taken from the source when the job read it
    # (the painter may close the source meanwhile); apply() makes it, ``doc`` becomes it, and this goes back
    # to None.
    new_document: tuple | None = None
    parameters: dict = field(default_factory=dict)  # the server's account of the job (model, sampler ...)
    canvas: object = None  # host.Canvas: for a managed profile ``data`` is None until apply() converts it
    dropped: bool = False  # discarded while apply() was still writing it: the rest of the insert is dropped
    inserting: bool = False  # apply() is writing it over several turns: a second apply() adds nothing
    read_size: tuple | None = None  # the canvas size when the job read the document (placement.misfit)

    def fits(self) -> str | None:
        """Why the result cannot go into its document now (a sentence), or None."""
        if self.new_document:  # a document of its own: the source may be anything by now
            return None
        if not host.is_open(self.doc):
            return "The document this result was made for is closed; the result stays in the list."
        if self.read_size is None:
            return None
        made = (self.width, self.height) if self.grow is not None or self.resize is not None else None
        return placement.misfit((self.doc.width(), self.doc.height()), self.read_size, made)

    def applied_layer(self):
        """The result's layer while it is still in the document (the painter may have deleted it)."""
        if self.layer is not None and not host.holds(self.doc, self.layer):
            self.layer = None
        return self.layer


@dataclass
class Pending:
    """A queued job: the document it reads from and writes to, and for a map, its source layer."""

    doc: object
    source: object = None


class Session(QObject):
    """Jobs of one docker (or one test) on one worker; forwards the worker's events for its jobs.

    ``accepted(job, jobs ahead in the server's queue)``, then ``queued(job, jobs ahead)`` each time that
    count changes while the job waits, ``started(job, steps, width, height)`` (the
    denoising steps per image and the size the model works at), ``progress(job, step, total)``,
    ``preview(job, QImage)``, then one of ``finished(job, results)``, ``failed(job, sentence)``,
    ``cancelled(job, reason)`` (``reason``: the server's, e.g. "shutting_down", when it cancelled the job
    itself; "" when it was asked to); ``preprocessed(job, layer)`` for a map.
    """

    accepted = pyqtSignal(str, int)
    queued = pyqtSignal(str, int)
    started = pyqtSignal(str, int, int, int)
    finished = pyqtSignal(str, object)
    failed = pyqtSignal(str, str)
    cancelled = pyqtSignal(str, str)
    progress = pyqtSignal(str, int, int)
    preview = pyqtSignal(str, object)
    preprocessed = pyqtSignal(str, object)
    applied = pyqtSignal(object)

    def __init__(self, worker, parent=None):
        super().__init__(parent)
        self.worker = worker
        self.pending: dict[str, Pending] = {}
        self.slices: list[float] = []  # seconds of UI-thread work per event-loop turn of reads and inserts
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
                                      remove=settings.remove, instruct=settings.instruct,
                                      max_generate_side=self.worker.offer.max_generate_side)
        plan.check_picture_size(region, self.worker.offer.max_side, self.worker.offer.max_pixels)
        plan.check_steps(region, settings)
        model = plan.model_of(self.worker.models, settings.model)
        # What the chosen model cannot do is a sentence now, before any pixels are read.
        plan.check_model(region, settings, [(unit.type, unit.scale) for unit in controls],
                         [(ref.mode, ref.weight) for ref in references], model)
        # A picked layer may have been deleted, or belong to another document (the docker keeps its lists
        # when the painter switches documents): a sentence now, rather than a job steered by stray pixels.
        owners = []
        for role, items in (("control", controls), ("reference", references)):
            for item in items:
                found = host.owner(doc, item.node)
                where = None if found is None else "" if found is doc else found.name()
                plan.check_source_layer(role, item.node.name(), where,
                                        None if found is None else (found.width(), found.height()),
                                        (info.width, info.height), item.node.type())
                if found is not doc:
                    host.flush(found)
                owners.append(found)
        box = region.box
        settings = plan.Settings(**vars(settings))
        frame = host.frame(doc)  # an animation: the frame shown now is the one read, and named on the result
        mask = host.selection_bytes(doc, box) if region.masked else None
        ref_bounds = [host.layer_bounds(found, ref.node) for found, ref in zip(owners[len(controls):], references)]
        image, control_reads, reference_reads = None, [], []

        def reads():
            """Reads from Krita stay on this (UI) thread, in strips (a yield between two); conversion and
            encoding go to the worker. A profile with other primaries is converted by Krita here."""
            nonlocal image
            if region.mode != "generate":
                image = yield from _read(doc, info, lambda strip: host.image_pixels(doc, strip), box, frame=frame)
            for unit in controls:  # a layer may have a colour space of its own: read in it
                layer = host.layer_canvas(unit.node, info)
                data = yield from _read(doc, layer, lambda strip, node=unit.node: host.layer_pixels(node, strip), box,
                                        info, frame)
                control_reads.append((unit, (data, layer)))
            for ref, bounds in zip(references, ref_bounds):
                layer = host.layer_canvas(ref.node, info)
                data = yield from _read(doc, layer, lambda strip, node=ref.node: host.layer_pixels(node, strip),
                                        bounds, info, frame)
                reference_reads.append((ref, bounds, (data, layer)))
        depth, linear = info.depth, info.linear

        def to_rgba(data):
            if isinstance(data, tuple):  # a layer's pixels, in the layer's own format
                data, layer = data
                return data.rgba(layer.depth, layer.linear)
            return data.rgba(depth, linear)

        def picture(data, unit=None):
            """Document pixels of the box -> RGBA of the region's picture size (on the worker); a control
            ``unit``'s layer becomes an opaque control image first (its transparent pixels hold no picture)."""
            rgba = to_rgba(data)
            if unit is not None:
                rgba = plan.control_picture(rgba, unit.type, unit.preprocess)
            if region.resampled:
                rgba = scaled_rgba(rgba, box.width, box.height, *region.picture)
            return rgba

        def build() -> plan.Job:
            rgba = picture(image) if image is not None else None
            units = [plan.ControlUnit(u.type, plan.raw_image(picture(data, u), *region.picture, "rgba8",
                                                             f"{u.type} control layer"),
                                      "on" if u.preprocess else "off", u.scale, u.start, u.end)
                     for u, data in control_reads]
            refs = []
            for ref, bounds, data in reference_reads:
                ref_rgba, w, h = _shrink(pixels.flatten(to_rgba(data), PAPER), bounds.width, bounds.height)
                refs.append(plan.Reference(plan.raw_image(ref_rgba, w, h, "rgba8", "reference layer"),
                                           ref.weight, ref.mode))
            return plan.build_job(region, settings, rgba, mask, units, refs, model)

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
                name = placement.layer_name(settings.prompt, item.seed, model=named,
                                            empty={"remove": "removed", "expand": "expanded"}.get(region.mode,
                                                                                                  "no prompt"),
                                            frame=frame)
                out.append(LayerResult(name, item.seed,
                                       spot.x, spot.y, spot.width, spot.height,
                                       _write(info, rgba), rgba, doc, grow=grow, parameters=result.parameters,
                                       canvas=info, read_size=(info.width, info.height)))
            return out

        job = self.worker.new_id()
        self.pending[job] = Pending(doc)
        self._drive(job, reads(), lambda _: self.worker.submit(build, finish, job), now=False)
        return job

    def upscale(self, doc, settings: plan.Settings, new_document: bool = False) -> str:
        """Upscale the whole picture ``settings.scale`` times (``settings.refine``: a diffusion refine too);
        the result scales the document, or goes into a new one, as a layer. Returns the job id."""
        if self.worker.state != "connected":
            raise plan.PlanError(self.worker.not_ready())
        info = host.canvas(doc)
        host.flush(doc)
        region = plan.plan_upscale(info.width, info.height, settings.scale, self.worker.offer.max_side,
                                   self.worker.offer.max_pixels)
        plan.check_steps(region, settings)
        model = plan.model_of(self.worker.models, settings.model)
        # A refine the chosen model cannot run (an instruct-only one) is a sentence now, not after the read.
        plan.check_model(region, settings, model=model)
        settings = plan.Settings(**vars(settings))
        made = (f"{doc.name()} upscaled", doc.resolution()) if new_document else None
        default_model = (self.worker.models or {}).get("default")
        read = []

        def reads():
            read.append((yield from _read(doc, info, lambda strip: host.image_pixels(doc, strip), region.box)))

        def build() -> plan.Job:
            return plan.build_job(region, settings, read[0].rgba(info.depth, info.linear), model=model)

        def finish(result):
            out = []
            used = result.parameters.get("model")
            for item in result.images:
                image = item.image
                name = placement.layer_name(placement.upscale_label(settings.prompt, settings.scale, settings.refine),
                                            item.seed,
                                            model=used if used and used != default_model else None)
                out.append(LayerResult(name, item.seed, 0, 0, image.width, image.height, _write(info, image.data),
                                       image.data, doc, resize=(info.width, info.height), new_document=made,
                                       parameters=result.parameters, canvas=info, read_size=(info.width, info.height)))
            return out

        job = self.worker.new_id()
        self.pending[job] = Pending(doc)
        self._drive(job, reads(), lambda _: self.worker.submit(build, finish, job), now=False)
        return job

    def cancel(self, job: str) -> None:
        self.worker.cancel(job)

    def _drive(self, job: str | None, steps, then, now: bool = True) -> None:
        """Run the generator ``steps`` on the UI thread in event-loop turns (``turns.Turns``: about
        SLICE_S of work each; the first turn at once when ``now``), then ``then(its return value)``. A
        failure ends ``job`` as a sentence."""
        work = turns.Turns(steps, SLICE_S)

        def turn():
            try:
                self.slices.append(work.turn())
            except Exception as exc:
                if job is None:
                    raise
                self.pending.pop(job, None)
                self.failed.emit(job, str(exc) if isinstance(exc, plan.PlanError)
                                 else f"Easel could not read the document: {sentence(exc)}")
                return
            finally:
                del self.slices[:-SLICES_KEPT]
            if work.done:
                then(work.value)
            else:
                QTimer.singleShot(NEXT_TURN_MS, turn)

        if now:
            turn()
        else:
            QTimer.singleShot(NEXT_TURN_MS, turn)

    # -- results ------------------------------------------------------------------------------

    def apply(self, result: LayerResult, parent=None, above=None, then=None):
        """Insert ``result`` as a new layer in its document's Easel group. An expand's result first grows
        the canvas (once: a document already grown is left as it is). A large result, or one in a large
        document, goes in over several event-loop turns: then this returns None and ``applied(result)`` says
        when the layer is in; otherwise it returns the layer (and ``applied`` is emitted too). ``parent`` /
        ``above``: where the layer goes (the Easel group's top by default); ``then(layer)`` is called once it
        is in. The layer joins the document only once filled: if the document is closed or the result
        ``dropped`` meanwhile, nothing is added (and no ``applied``). A result already in, or still going
        in, is not added twice (a layer the painter deleted since may be added again). A result that no
        longer fits its document (closed, cropped, resized: ``LayerResult.fits``) raises PlanError, a
        sentence, and nothing is added."""
        if result.applied_layer() is not None or result.inserting:
            return result.layer
        misfit = result.fits()
        if misfit is not None:
            raise plan.PlanError(misfit)
        if not result.new_document and result.canvas is not None:
            _follow_conversion(result)

        def steps():
            try:
                return (yield from insert())
            finally:  # done, dropped, or failed: the result may be applied again only if it is not in
                result.inserting = False

        def insert():
            # Growing or scaling the canvas recomposites all of it, as adding a layer does.
            alone = (result.grow is not None or result.resize is not None or result.new_document) and \
                max(result.width * result.height, result.doc.width() * result.doc.height()) >= plan.ALONE_PIXELS
            if alone:
                yield ALONE
            if result.grow is not None:
                host.grow_canvas(result.doc, *result.grow)
            if result.new_document and result.layer is None:
                result.doc = host.new_document_like(result.canvas, result.width, result.height,
                                                    *result.new_document)
                result.new_document = None
            elif result.resize is not None:
                host.scale_canvas(result.doc, *result.resize, result.width, result.height)
            canvas, doc = result.canvas, result.doc
            layer = host.new_layer(doc, result.name)
            depth = canvas.depth if canvas is not None else None
            size = pixels.bytes_per_pixel(depth) if depth else 4
            row = result.width * size
            whole = plan.Box(result.x, result.y, result.width, result.height)
            managed = result.data is None  # a managed profile: Krita converts each strip here, in smaller strips
            steps = plan.insert_steps(whole, size, doc.width() * doc.height(),
                                      plan.MANAGED_STRIP_PIXELS * size if managed else plan.WRITE_STRIP_BYTES)
            writer = canvas.writer() if managed else None
            try:
                for step in steps:
                    yield ALONE if step.alone else None
                    if result.dropped or not host.is_open(doc):  # the half-filled layer never joined the document
                        return None
                    if step.kind == "fill":
                        top, strip = step.box.y - result.y, step.box
                        if managed:
                            rgba = result.rgba[top * result.width * 4:(top + strip.height) * result.width * 4]
                            data = writer.convert(rgba, strip.width, strip.height)
                        else:
                            data = result.data[top * row:(top + strip.height) * row]
                        host.write_pixels(layer, data, strip.x, strip.y, strip.width, strip.height)
                    else:
                        host.attach(doc, layer, parent, above)
            finally:
                if writer is not None:
                    writer.close()
            result.layer = layer
            return layer

        done = []

        def finished(layer):
            if layer is None:
                return
            done.append(layer)
            if then is not None:
                then(layer)
            self.applied.emit(result)

        result.inserting = True
        self._drive(None, steps(), finished)
        return done[0] if done else None

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
        if host.is_mask(node):
            plan.check_source_layer("control", node.name(), "", None, (info.width, info.height), node.type())
        box = plan.Box(0, 0, info.width, info.height)  # the whole canvas, so the map lines up
        layer = host.layer_canvas(node, info)  # the layer may have a colour space of its own
        read = []

        def reads():  # in strips, like a job's reads
            read.append((yield from _read(doc, layer, lambda strip: host.layer_pixels(node, strip), box, info)))

        depth, linear = layer.depth, layer.linear
        name = f"{control_type} map of {node.name()}"

        def build():
            rgba = pixels.flatten(read[0].rgba(depth, linear), PAPER)  # a sketch on a transparent layer: on paper
            return protocol.images.ImageData("rgba8", box.width, box.height, rgba)

        def finish(result):
            image = result
            if image.format != "rgba8":  # preprocess answers PNG unless asked otherwise
                from .qt import QImage, image_bytes
                rgba = image_bytes(QImage.fromData(image.data))
            else:
                rgba = image.data
            return LayerResult(name, 0, 0, 0, image.width, image.height, _write(info, rgba), rgba, doc, canvas=info,
                               read_size=(info.width, info.height))

        job = self.worker.new_id()
        self.pending[job] = Pending(doc, source=node)
        self._drive(job, reads(), lambda _: self.worker.preprocess(control_type, build, finish, job), now=False)
        return job

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, job: str, kind: str, payload) -> None:
        pending = self.pending.get(job)
        if pending is None:
            return
        if kind == "accepted":
            self.accepted.emit(job, payload)
        elif kind == "queued":
            self.queued.emit(job, payload)
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
                try:
                    self.apply(payload, parent=source.parentNode(), above=source,
                               then=lambda layer: self.preprocessed.emit(job, layer))
                except plan.PlanError as exc:  # the document was closed or resized meanwhile
                    self.failed.emit(job, str(exc))
            else:
                self.finished.emit(job, payload)
        elif kind == "error":
            del self.pending[job]
            self.failed.emit(job, payload)
        elif kind == "cancelled":
            del self.pending[job]
            self.cancelled.emit(job, payload or "")


@dataclass
class _Read:
    """Pixels read in strips: the document's bytes, or 8-bit sRGB RGBA when Krita converted them
    (a managed profile). Joined on the worker: one 96 MB copy is a long wait for the UI thread."""

    parts: list
    converted: bool

    def rgba(self, depth: str, linear: bool) -> bytes:
        data = b"".join(self.parts)
        return data if self.converted else pixels.to_rgba8(data, depth, linear)


def _read(doc, info, read, box, canvas=None, frame=None):
    """A generator: ``read(strip)`` for each strip of ``box`` (a yield after each), returning a _Read;
    a profile that needs Krita's conversion is converted strip by strip, here on the UI thread. ``info``
    says what the pixels read are (the document's format, or a layer's own: ``host.layer_canvas``);
    ``canvas`` the document's size as the job saw it (``info``'s when None); ``frame`` the animation frame
    it saw (``host.frame``).

    The painter can close, crop or resize ``doc``, or step to another frame of an animation, between two
    strips (a large read spans many turns, and the first waits for the next one): then the picture would
    be short, out of line or of two frames, so the job ends with a sentence (PlanError)."""
    canvas = canvas or info
    parts = []
    size = pixels.bytes_per_pixel(info.depth)
    reader = info.reader() if info.managed else None  # one scratch document for all the strips
    try:
        for strip in plan.strips(box, size, plan.MANAGED_STRIP_PIXELS * size if reader else plan.STRIP_BYTES):
            if not host.is_open(doc):
                raise plan.PlanError("The document was closed before Easel had read it; nothing was sent.")
            if (doc.width(), doc.height()) != (canvas.width, canvas.height):
                raise plan.PlanError(f"The document changed size ({canvas.width}x{canvas.height} to {doc.width()}x"
                                     f"{doc.height()}) while Easel read it; nothing was sent. Press the button again.")
            if frame is not None and doc.currentTime() != frame:
                raise plan.PlanError(f"The animation went from frame {frame} to frame {doc.currentTime()} while "
                                     "Easel read it; nothing was sent. Press the button again on the frame to change.")
            data = read(strip)
            parts.append(reader.convert(data, strip.width, strip.height) if reader else data)
            yield
    finally:  # done, failed, or the generator dropped
        if reader is not None:
            reader.close()
    return _Read(parts, info.managed)


def _follow_conversion(result: LayerResult) -> None:
    """The painter may have converted the document (Image > Convert Image Color Space: 8- to 16-bit, another
    profile ...) since the job read it: the result's pixels, made for the old format, are made again for the
    new one from its sRGB picture (written as they were, they were garbage: half the bytes of a 16-bit layer).
    A document no longer in RGB is a sentence."""
    try:
        now = host.canvas(result.doc)
    except pixels.UnsupportedColor as exc:
        raise plan.PlanError(f"The document was converted since this job read it. {exc}") from None
    was = result.canvas
    if (now.depth, now.profile) != (was.depth, was.profile):
        result.canvas, result.data = now, _write(now, result.rgba)


def _write(info, rgba: bytes) -> bytes | None:
    """A result in the document's format (on the worker); None for a managed profile: apply() converts it."""
    return None if info.managed else pixels.from_rgba8(rgba, info.depth, info.linear)


def _shrink(rgba: bytes, width: int, height: int) -> tuple[bytes, int, int]:
    """Scale a reference down to REFERENCE_SIDE on its longest side (it is tiny to the encoder)."""
    side = max(width, height)
    if side <= REFERENCE_SIDE:
        return rgba, width, height
    w, h = max(1, round(width * REFERENCE_SIDE / side)), max(1, round(height * REFERENCE_SIDE / side))
    return scaled_rgba(rgba, width, height, w, h), w, h
