"""The Easel docker: server settings, prompt and job settings, control and reference layers,
progress with a live preview, and the last results. Work goes through ``Session``."""

from __future__ import annotations

import random

from . import extension, host, models, pixels, plan, prompt_fields, protocol, qt
from .protocol import capabilities
from .qt import ALIGN_CENTER, HORIZONTAL, KEEP_ASPECT, SMOOTH, USER_ROLE, QPixmap, QtGui, QtWidgets, rgba_image
from .session import ControlLayer, ReferenceLayer, Session
from .worker import Worker, sentence

W = QtWidgets
MAX_RESULTS = 12
_worker: Worker | None = None  # one connection for the whole Krita session, shared by windows


def shared_worker() -> Worker:
    global _worker
    if _worker is None:
        _worker = Worker()
        _worker.configure(host.read_setting("url", protocol.messages.DEFAULT_URL),
                          host.read_setting("token", ""), cert=host.read_setting("cert", ""))
    return _worker


class EaselDocker(host.DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("Easel")
        self.worker = shared_worker()
        self.session = Session(self.worker, self)
        self.job: str | None = None
        self.results: dict[int, object] = {}  # list item key -> LayerResult
        self._keys = iter(range(1 << 62))
        self.controls: list[ControlLayer] = []
        self.references: list[ReferenceLayer] = []
        self._offer = capabilities.Offer()  # the whole vocabulary until the server says what it offers
        self._build()
        # Not state_changed: the worker may have connected while the widgets were built, and that news, still
        # on its way to worker.state, would pass this docker by (it showed "Connecting …" and no models for good).
        self.worker.state_shown.connect(self._show_state)
        self.worker.models_changed.connect(lambda _reply: self._show_models())
        self._show_state(self.worker.state, self.worker.message)
        self.session.accepted.connect(self._on_waiting)
        self.session.queued.connect(self._on_waiting)
        self.session.started.connect(self._on_started)
        self.session.progress.connect(self._on_progress)
        self.session.preview.connect(self._on_preview)
        self.session.finished.connect(self._on_finished)
        self.session.failed.connect(self._on_failed)
        self.session.cancelled.connect(self._on_cancelled)
        self.session.preprocessed.connect(lambda job, layer: self._say(f"Added the layer “{layer.name()}”."))
        extension.dockers().append(self)
        # A closed window deletes its docker; the shortcuts must not reach for the dead widget.
        self.destroyed.connect(lambda _=None, docker=self: extension.forget(docker))

    # -- layout -------------------------------------------------------------------------------

    def _build(self) -> None:
        # Painters dock it narrow (~260 px): rows hold one or two controls, combo boxes elide long names, and
        # the action buttons get rows of their own, so nothing pushes the docker wider than that.
        root = W.QWidget(self)
        form = W.QVBoxLayout(root)

        server = W.QHBoxLayout()
        self.url = W.QLineEdit(self.worker.url)
        self.url.setCursorPosition(0)  # a narrow field shows the scheme and host, not the address's last characters
        self.url.setToolTip("Address of the Easel server (easel serve), e.g. ws://127.0.0.1:8760/")
        self.token = W.QLineEdit(self.worker.token)
        self.token.setPlaceholderText("token")
        self.token.setToolTip("The server's token, if it has one (easel serve --token)")
        self.token.setEchoMode(W.QLineEdit.EchoMode.Password if hasattr(W.QLineEdit, "EchoMode")
                               else W.QLineEdit.Password)
        self.connect_button = connect = W.QPushButton("Connect")
        connect.setToolTip("Connect to this address (and save it, with the token and certificate)")
        connect.clicked.connect(self._connect)
        server.addWidget(self.url, 3)
        server.addWidget(self.token, 1)
        server.addWidget(connect)
        form.addLayout(server)
        self.cert = W.QLineEdit(self.worker.cert)
        self.cert.setPlaceholderText("certificate file (wss://), optional")
        self.cert.setToolTip("For a wss:// server with a self-signed certificate (`easel cert`): the server's "
                             "easel-cert.pem. Only a server holding its key is trusted (the certificate is pinned).")
        form.addWidget(self.cert)
        self.state = _sentence_label()
        form.addWidget(self.state)

        row = W.QHBoxLayout()
        self.model = _combo("The server's models (connect to list them); the choice is saved with the document")
        self.model.activated.connect(lambda _index: (self._remember_model(), self._apply_model()))
        self.reload_models = _tool("↻", "Read the server's models again")
        self.reload_models.clicked.connect(self._refresh)
        row.addWidget(W.QLabel("Model"))
        row.addWidget(self.model, 1)
        row.addWidget(self.reload_models)
        form.addLayout(row)

        self.prompt = prompt_fields.PromptEdit(self._prompt_words)
        self.prompt.setPlaceholderText("What to paint (selection: fill it; no selection: the whole image)")
        self.prompt.setMaximumHeight(70)
        self.prompt.setTabChangesFocus(True)  # Tab goes on to the next field, as in the one-line fields
        form.addWidget(self.prompt)
        self.negative = prompt_fields.PromptLine(self._prompt_words)
        self.negative.setPlaceholderText("Negative prompt: what to avoid")
        self.negative.setToolTip(NEGATIVE_TIP)
        form.addWidget(self.negative)

        grid = W.QGridLayout()
        self.strength, self.strength_label = _slider(1, 100, 100, _strength_text, ("100% refine",))
        self.strength.setToolTip("100%: paint anew from noise; less: refine what is there (lower: closer to it)")
        grid.addWidget(W.QLabel("Strength"), 0, 0)
        grid.addLayout(_row(self.strength, self.strength_label), 0, 1)
        self.steps = _spin(1, self._offer.max_steps, 20)
        self.steps.setToolTip("Denoising steps per image (more: slower, often finer)")
        self.batch = _spin(1, self._offer.max_batch, 1)
        self.batch.setToolTip("Images per job: the first goes onto the canvas, the others wait under Results")
        grid.addWidget(W.QLabel("Steps"), 1, 0)
        grid.addLayout(_row(self.steps, W.QLabel("Batch"), self.batch), 1, 1)
        self.guidance = _double(0, 50, 0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setSpecialValueText("auto")  # 0: what suits the model (plan.default_guidance)
        self.guidance.setToolTip("How strongly the prompt is followed. auto: what suits the model and the job "
                                 "(7 on SD models, 7.5 for instruct edits; Flux: 3.5, 30 for inpaint and expand "
                                 "with its Fill model, 2.5 for Kontext edits)")
        grid.addWidget(W.QLabel("Guidance"), 2, 0)
        grid.addWidget(self.guidance, 2, 1)
        self.seed = _spin(0, 2**31 - 1, random.randint(0, 99999))
        self.seed.setMinimumWidth(self.seed.fontMetrics().horizontalAdvance("0") * 9)  # not 2**31's 10 digits
        self.seed.setEnabled(False)
        self.fixed_seed = W.QCheckBox("Fixed")
        self.fixed_seed.setToolTip("Use this seed for every job (off: a new random seed each time)")
        self.fixed_seed.toggled.connect(self.seed.setEnabled)
        grid.addWidget(W.QLabel("Seed"), 3, 0)
        grid.addLayout(_row(self.seed, self.fixed_seed), 3, 1)
        grid.setColumnStretch(1, 1)
        form.addLayout(grid)

        # What a painter presses and watches comes first, in sight without scrolling; the boxes of settings
        # for the other tools follow (the docker is taller than most screens).
        buttons = W.QHBoxLayout()
        self.generate_button = W.QPushButton("Generate")
        self.generate_button.clicked.connect(lambda: self.generate())  # not the signal's `checked` as remove
        self.remove_button = W.QPushButton("Remove")
        self.remove_button.setToolTip(REMOVE_TIP)
        self.remove_button.clicked.connect(lambda: self.generate(remove=True))
        buttons.addWidget(self.generate_button, 2)
        buttons.addWidget(self.remove_button, 1)
        form.addLayout(buttons)
        running = W.QHBoxLayout()  # Cancel beside the progress it stops
        self.progress = W.QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.cancel_button = W.QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; nothing is added")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        form.addLayout(running)
        self.message = _sentence_label()
        form.addWidget(self.message)
        self.preview = W.QLabel()
        self.preview.setMinimumHeight(96)
        self.preview.setAlignment(ALIGN_CENTER)
        self.preview.hide()  # shown while a job sends previews: idle, it was an empty gap above the results
        form.addWidget(self.preview)

        form.addWidget(W.QLabel("Results"))
        self.result_list = W.QListWidget()
        self.result_list.setIconSize(QtGui.QPixmap(64, 64).size())
        self.result_list.setMaximumHeight(150)
        # a result's name (its prompt and seed) is elided in a narrow docker, whole in its tooltip: a sideways
        # scroll bar would hide the end of every name and a third of the list's height
        self.result_list.setHorizontalScrollBarPolicy(qt.SCROLL_BAR_OFF)
        form.addWidget(self.result_list)
        row = W.QHBoxLayout()
        apply = W.QPushButton("Apply as layer")
        apply.setToolTip("Add the result picked in the list as a layer")
        apply.clicked.connect(self._apply_selected)
        discard = W.QPushButton("Discard")
        discard.setToolTip("Forget the result picked in the list, and take its layer away if it was added")
        discard.clicked.connect(self._discard_selected)
        row.addWidget(apply)
        row.addWidget(discard)
        form.addLayout(row)

        form.addWidget(self._selection_box())
        form.addWidget(self._expand_box())
        form.addWidget(self._instruct_box())
        form.addWidget(self._upscale_box())
        form.addWidget(self._control_box())
        form.addWidget(self._reference_box())

        form.addStretch(1)

        scroll = W.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(root)
        self.setWidget(scroll)

    def _selection_box(self):
        """How a selection is edited: its grow and feather, what it starts from, soft or hard."""
        box = W.QGroupBox("Selection")
        grid = W.QGridLayout(box)
        self.grow, self.grow_label = _slider(0, 256, protocol.rules.MASK_GROW, "{} px".format)
        self.feather, self.feather_label = _slider(0, 256, protocol.rules.MASK_FEATHER, "{} px".format)
        self.grow.setToolTip("Grow the selection by this many pixels before painting (0: exactly the selection)")
        self.feather.setToolTip("Soften the grown selection's edge over this many pixels (0: a hard edge)")
        grid.addWidget(W.QLabel("Grow"), 0, 0)
        grid.addLayout(_row(self.grow, self.grow_label), 0, 1)
        grid.addWidget(W.QLabel("Feather"), 1, 0)
        grid.addLayout(_row(self.feather, self.feather_label), 1, 1)
        self.fill = _combo("What the selection starts from: below 100% strength, and for Remove at any strength "
                           f"(it refines the filled selection at {protocol.rules.REMOVE_STRENGTH:.0%} of it)")
        for label, value in FILL_LABELS:
            self.fill.addItem(label, value)
        grid.addWidget(W.QLabel("Start from"), 2, 0)
        grid.addWidget(self.fill, 2, 1)
        self.soft = W.QCheckBox("Soft")
        self.soft.setChecked(True)
        self.soft.setToolTip("Soft inpainting: a faint part of the selection or of its feathered edge changes "
                             "only a little. Off: the selection is cut at 50%.")
        grid.addWidget(self.soft, 3, 1)
        grid.setColumnStretch(1, 1)
        return box

    def _expand_box(self):
        """Grow the canvas on the sides set and paint the new band."""
        box = W.QGroupBox("Expand the canvas (pixels)")
        grid = W.QGridLayout(box)
        # Arrows, not the sides' names: two of "bottom 4096"'s width do not fit a narrow docker side by side.
        # Made in the order they are seen (the Tab key's), kept in the protocol's (left, top, right, bottom).
        spins = {}
        for name, arrow, place, where in (("left", "←", (0, 0), "on the left"), ("right", "→", (0, 1), "on the right"),
                                          ("top", "↑", (1, 0), "at the top"), ("bottom", "↓", (1, 1), "at the bottom")):
            spins[name] = spin = _spin(0, protocol.rules.MAX_EXPAND, 0)
            spin.setPrefix(f"{arrow} ")
            spin.setToolTip(f"Pixels Expand adds {where}")
            grid.addWidget(spin, *place)
        self.expand_sides = [spins[name] for name in ("left", "top", "right", "bottom")]
        self.expand_button = W.QPushButton("Expand")
        self.expand_button.setToolTip(EXPAND_TIP)
        self.expand_button.clicked.connect(lambda: self.generate(expand=tuple(s.value() for s in self.expand_sides)))
        grid.addWidget(self.expand_button, 2, 0, 1, 2)
        return box

    def _instruct_box(self):
        """Edit by instruction: the prompt is the instruction; inside the selection, else the whole picture."""
        box = W.QGroupBox("Instruct")
        grid = W.QGridLayout(box)
        self.image_guidance = _double(1, 20, protocol.rules.IMAGE_GUIDANCE)
        self.image_guidance.setSingleStep(0.1)
        self.image_guidance.setToolTip(IMAGE_GUIDANCE_TIP)
        self.instruct_button = W.QPushButton("Instruct")
        self.instruct_button.setToolTip(INSTRUCT_TIP)
        self.instruct_button.clicked.connect(lambda: self.generate(instruct=True))
        grid.addWidget(W.QLabel("Image guidance"), 0, 0)
        grid.addWidget(self.image_guidance, 0, 1)
        grid.addWidget(self.instruct_button, 1, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        return box

    def _upscale_box(self):
        """Upscale the whole picture with the server's super-resolution models (and refine it)."""
        box = W.QGroupBox("Upscale")
        grid = W.QGridLayout(box)
        self.upscale_factor = _double(protocol.rules.UPSCALE_MIN, protocol.rules.UPSCALE_MAX, 2.0, "×")
        self.upscale_factor.setToolTip("How many times wider and taller the picture becomes")
        self.upscaler = _combo("The super-resolution model (lanczos: plain resampling)")  # filled by _apply_offer
        self.upscale_refine, self.upscale_refine_label = _slider(0, 100, 0, "{}%".format)
        self.upscale_refine.setToolTip("Refine the upscaled picture with the prompt at this strength (0: none)")
        self.upscale_new = W.QCheckBox("New document")
        self.upscale_new.setToolTip("Put the result into a new document; off: scale this document and add the "
                                    "result as a layer")
        self.upscale_button = W.QPushButton("Upscale")
        self.upscale_button.clicked.connect(lambda: self.generate(upscale=True))
        grid.addWidget(W.QLabel("Scale"), 0, 0)
        grid.addWidget(self.upscale_factor, 0, 1)
        grid.addWidget(W.QLabel("Upscaler"), 1, 0)
        grid.addWidget(self.upscaler, 1, 1)
        grid.addWidget(W.QLabel("Refine"), 2, 0)
        grid.addLayout(_row(self.upscale_refine, self.upscale_refine_label), 2, 1)
        grid.addWidget(self.upscale_new, 3, 0, 1, 2)
        grid.addWidget(self.upscale_button, 4, 0, 1, 2)
        grid.setColumnStretch(1, 1)
        return box

    def _control_box(self):
        box = W.QGroupBox("Control layers")
        column = W.QVBoxLayout(box)
        self.control_layer = _combo("The layer that steers the job (a line drawing, a depth map, a picture …)")
        refresh = _tool("↻", "Reload the document's layers and the server's models")
        refresh.clicked.connect(self._refresh)
        column.addLayout(_row(self.control_layer, refresh))
        grid = W.QGridLayout()
        self.control_type = _combo("Control type")  # filled with the server's types by _apply_offer
        self.control_scale = _double(0, 2, 1.0, "×")
        # in percent, as the unit list, Strength and the server's sentences say a share of the steps
        self.control_start = _percent(0, "from ")
        self.control_end = _percent(100, "to ")
        self.control_scale.setToolTip("Control strength (0 switches the unit off)")
        self.control_start.setToolTip("Share of the steps where the control starts")
        self.control_end.setToolTip("Share of the steps where the control stops")
        self.make_map = make_map = W.QPushButton("Make map layer")
        make_map.clicked.connect(self._make_map)
        self.control_pre = W.QCheckBox("Preprocess")
        self.control_add = add = W.QPushButton("Add")
        add.clicked.connect(self._add_control)
        self.control_type.currentTextChanged.connect(self._show_preprocess)
        grid.addWidget(self.control_type, 0, 0)
        grid.addWidget(self.control_scale, 0, 1)
        grid.addWidget(self.control_start, 1, 0)
        grid.addWidget(self.control_end, 1, 1)
        grid.addWidget(make_map, 2, 0, 1, 2)
        grid.addWidget(self.control_pre, 3, 0)
        grid.addWidget(add, 3, 1)
        column.addLayout(grid)
        self.control_list = _unit_list()
        self.control_list.itemDoubleClicked.connect(lambda item: self._remove(self.controls, self.control_list, item))
        self.control_list.setToolTip("The control units of the next jobs: double-click one to remove it")
        column.addWidget(self.control_list)
        return box

    def _reference_box(self):
        box = W.QGroupBox("Reference layers")
        grid = W.QGridLayout(box)
        self.reference_layer = _combo("The layer whose look the job borrows (it may be in another open document)")
        self.reference_mode = _combo("What the reference lends: its look (reference), its style, its "
                                     "composition, or a face")  # filled with the server's modes by _apply_offer
        self.reference_weight = _double(0, 2, 1.0, "×")
        self.reference_weight.setToolTip("How strongly the reference counts")
        self.reference_add = add = W.QPushButton("Add")
        add.clicked.connect(self._add_reference)
        grid.addWidget(self.reference_layer, 0, 0, 1, 2)
        grid.addWidget(self.reference_mode, 1, 0)
        grid.addWidget(self.reference_weight, 1, 1)
        grid.addWidget(add, 2, 1)
        self.reference_list = _unit_list()
        self.reference_list.setToolTip("The references of the next jobs: double-click one to remove it")
        self.reference_list.itemDoubleClicked.connect(
            lambda item: self._remove(self.references, self.reference_list, item))
        grid.addWidget(self.reference_list, 3, 0, 1, 2)
        return box

    # -- Krita hooks --------------------------------------------------------------------------

    def canvasChanged(self, canvas):
        self._refresh_layers()
        self._show_models()  # another document may have saved another model

    def _document(self):
        return host.instance().activeDocument()

    def _refresh(self) -> None:
        self._refresh_layers()
        if self.worker.state == "connected":
            self.worker.refresh_models()

    def _refresh_layers(self) -> None:
        doc = self._document()
        for combo in (self.control_layer, self.reference_layer):
            combo.clear()
            for node in host.pickable_layers(doc) if doc else []:
                combo.addItem(node.name(), node.uniqueId().toString())

    def _picked(self, combo):
        doc = self._document()
        node = host.find_layer(doc, combo.currentData()) if doc and combo.currentData() else None
        if node is None:
            self._say("Pick a layer first (press ↻ to reload the list).", error=True)
        return doc, node

    # -- actions ------------------------------------------------------------------------------

    def settings(self, remove: bool = False, expand: tuple | None = None, upscale: bool = False,
                 instruct: bool = False) -> plan.Settings:
        # A switched-off field is not sent: the chosen model cannot take it (its tooltip says why).
        negative = self.negative.text() if self.negative.isEnabled() else ""
        guidance = self.guidance.value() or None  # 0 shows "auto"
        if upscale:
            return plan.Settings(prompt=self.prompt.toPlainText(), negative_prompt=negative, guidance=guidance,
                                 model=self.model.currentData() or None, steps=self.steps.value(),
                                 seed=self.seed.value() if self.fixed_seed.isChecked() else None,
                                 scale=self.upscale_factor.value(), upscaler=self.upscaler.currentData() or None,
                                 refine=self.upscale_refine.value() / 100)
        return plan.Settings(prompt=self.prompt.toPlainText(), negative_prompt=negative, guidance=guidance,
                             model=self.model.currentData() or None, instruct=instruct,
                             image_guidance=self.image_guidance.value() if self.image_guidance.isEnabled() else None,
                             strength=self.strength.value() / 100, steps=self.steps.value(),
                             seed=self.seed.value() if self.fixed_seed.isChecked() else None,
                             batch=self.batch.value(), mask_grow=self.grow.value(),
                             mask_feather=self.feather.value(), fill=self.fill.currentData(),
                             soft_inpaint=self.soft.isChecked(), remove=remove, expand=expand or (0, 0, 0, 0))

    def generate(self, remove: bool = False, expand: tuple | None = None, upscale: bool = False,
                 instruct: bool = False) -> None:
        doc = self._document()
        if doc is None:
            self._say("Open a document first.", error=True)
            return
        if self.job is not None:
            self._say("A job is already running; cancel it or wait for it.", error=True)
            return
        try:
            if self.model.currentData():
                host.save_document_settings(doc, {"model": self.model.currentData()})
            if expand is not None:  # Expand pressed: with no side set it is a sentence, not some other job
                plan.check_expand(expand)
            if upscale:
                self.job = self.session.upscale(doc, self.settings(upscale=True), self.upscale_new.isChecked())
            else:
                self.job = self.session.generate(doc, self.settings(remove, expand, instruct=instruct),
                                                 list(self.controls), list(self.references))
        except (plan.PlanError, pixels.UnsupportedColor) as exc:
            self._say(str(exc), error=True)
            return
        except Exception as exc:  # anything else still reaches the painter as a sentence
            self._say(f"Easel could not start the job: {sentence(exc)}", error=True)
            return
        for button in self._job_buttons():
            button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first step
        self._say("Working …")

    def cancel(self) -> None:
        if self.job is not None:
            self.session.cancel(self.job)
            self._say("Cancelling …")

    def _connect(self) -> None:
        host.write_setting("url", self.url.text().strip())
        host.write_setting("token", self.token.text().strip())
        host.write_setting("cert", self.cert.text().strip())
        self.worker.configure(self.url.text(), self.token.text(), force=True, cert=self.cert.text())

    def _add_control(self) -> None:
        doc, node = self._picked(self.control_layer)
        if node is None:
            return
        if self.control_start.value() >= self.control_end.value():
            self._say("A control's start must come before its end.", error=True)
            return
        unit = ControlLayer(node, self.control_type.currentText(), self.control_scale.value(),
                            self.control_start.value() / 100, self.control_end.value() / 100,
                            self.control_pre.isChecked())
        self.controls.append(unit)
        _add_entry(self.control_list, f"{node.name()}: {unit.type} ×{unit.scale:.2f} "
                   f"{unit.start:.0%}–{unit.end:.0%}{' (preprocess)' if unit.preprocess else ''}")

    def _add_reference(self) -> None:
        doc, node = self._picked(self.reference_layer)
        if node is None:
            return
        ref = ReferenceLayer(node, self.reference_weight.value(), self.reference_mode.currentText())
        self.references.append(ref)
        _add_entry(self.reference_list, f"{node.name()}: {ref.mode} ×{ref.weight:.2f}")

    @staticmethod
    def _remove(items: list, widget, item) -> None:
        row = widget.row(item)
        widget.takeItem(row)
        del items[row]

    def _make_map(self) -> None:
        doc, node = self._picked(self.control_layer)
        if node is None:
            return
        try:
            self.session.preprocess_layer(doc, node, self.control_type.currentText())
            self._say(f"Making a {self.control_type.currentText()} map of “{node.name()}” …")
        except (plan.PlanError, pixels.UnsupportedColor) as exc:
            self._say(str(exc), error=True)
        except Exception as exc:
            self._say(f"Easel could not make the map: {sentence(exc)}", error=True)

    # -- job events ---------------------------------------------------------------------------

    def _end_job(self) -> None:
        self.job = None
        self._apply_model()  # the buttons the chosen model can use come back
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.preview.clear()
        self.preview.hide()

    def _on_waiting(self, job: str, ahead: int) -> None:
        if job == self.job and ahead > 0:  # 0: it runs next, "Working …" stays until it starts
            self._say(f"Waiting: {ahead} job{'s' * (ahead != 1)} ahead in the server's queue …")

    def _on_started(self, job: str, steps: int, width: int, height: int) -> None:
        if job == self.job:
            self._say(f"Working: {steps} step{'s' * (steps != 1)} per image at {width}×{height} …")

    def _on_progress(self, job, step, total) -> None:
        if job == self.job:
            self.progress.setRange(0, total)
            self.progress.setValue(step)

    def _on_preview(self, job, image) -> None:
        if job == self.job:
            self.preview.show()
            # the message's width: the preview's own is stale while it was hidden (the two are as wide)
            pixmap = QPixmap.fromImage(image).scaled(self.message.width(), 160, KEEP_ASPECT, SMOOTH)
            self.preview.setPixmap(pixmap)

    def _on_finished(self, job, results) -> None:
        if job != self.job:
            return
        self._end_job()
        added = True
        # (apply() turns new_document into the document it makes; the painter still looks at this one)
        where = " to a new document" if results and results[0].new_document else ""
        for index, result in enumerate(results):
            item = W.QListWidgetItem(result.name)
            item.setToolTip(result.name)
            item.setIcon(QtGui.QIcon(QPixmap.fromImage(rgba_image(result.rgba, result.width, result.height))))
            key = next(self._keys)
            item.setData(USER_ROLE, key)
            self.results[key] = result
            self.result_list.insertItem(0, item)
            if index == 0:  # the first of a batch goes straight onto the canvas
                added = self._apply(result)
        while self.result_list.count() > MAX_RESULTS:  # forget the oldest (their layers stay)
            old = self.result_list.takeItem(self.result_list.count() - 1)
            self.results.pop(old.data(USER_ROLE), None)
        if not added:  # _apply said why
            return
        more = f" {len(results) - 1} more in the list below." if len(results) > 1 else ""
        self._say(f"Added “{results[0].name}”{where}.{more}")

    def _on_failed(self, job, message) -> None:
        if job == self.job:
            self._end_job()
        self._say(message, error=True)

    def _on_cancelled(self, job, reason: str = "") -> None:
        if job == self.job:
            self._end_job()
            self._say(plan.cancelled_sentence(reason), error=bool(reason))

    def _selected_result(self):
        item = self.result_list.currentItem()
        if item is None:
            self._say("Pick a result in the list first.", error=True)
            return None, None
        return item, self.results[item.data(USER_ROLE)]

    def _apply(self, result) -> bool:
        """Put ``result`` in as a layer; False (and a sentence) when its document was closed or resized."""
        try:
            self.session.apply(result)
        except plan.PlanError as exc:
            self._say(str(exc), error=True)
            return False
        except RuntimeError as exc:  # the document went away under Krita's own feet
            self._say(f"The result's document is gone: {exc}", error=True)
            return False
        return True

    def _apply_selected(self) -> None:
        item, result = self._selected_result()
        if result is not None:
            if result.applied_layer() is not None or result.inserting:  # a layer the painter deleted is not in
                self._say("That result is already a layer." if result.layer is not None
                          else "That result is going in as a layer already.")
                return
            where = " to a new document" if result.new_document else ""
            if self._apply(result):  # the line above still said the last job's (or "already a layer")
                self._say(f"Added “{result.name}”{where}.")

    def _discard_selected(self) -> None:
        item, result = self._selected_result()
        if result is not None:
            self.result_list.takeItem(self.result_list.row(item))
            self.results.pop(item.data(USER_ROLE), None)
            result.dropped = True  # an insert still under way stops before its layer joins the document
            if result.applied_layer() is not None:  # also take its layer off the canvas (if still there)
                host.remove_layer(result.doc, result.layer)
                result.layer = None

    # -- feedback -----------------------------------------------------------------------------

    def _show_state(self, state: str, message: str) -> None:
        marks = {"connected": "●", "connecting": "◌", "disconnected": "○", "not_responding": "◍"}
        self.state.setText(f"{marks.get(state, '')} {message}")
        self._apply_offer(self.worker.offer)  # a (re)connect may reach a server with other ControlNets
        if state == "connected":
            self._show_models()
        if state == "not_responding" and self.job is not None:
            self._say(message, error=True)
        elif state == "connected" and self.job is not None and self.message.text().startswith("The Easel server"):
            self._say("The server answers again; working …")  # the job goes on where it was

    def _show_models(self) -> None:
        """List the server's models; show the document's saved one (else the server's default)."""
        reply = self.worker.models
        entries = models.choices(reply, (self.worker.welcome or {}).get("capabilities"))
        doc = self._document()
        saved = host.document_settings(doc).get("model") if doc is not None else None
        current = self.model.currentData()
        names = [entry.name for entry in entries]
        chosen = models.pick(names, saved, current, (reply or {}).get("default"))
        self.model.blockSignals(True)
        self.model.clear()
        for index, entry in enumerate(entries):
            self.model.addItem(entry.label, entry.name)
            self.model.setItemData(index, entry.tooltip, qt.TOOLTIP_ROLE)
        if chosen is not None:
            self.model.setCurrentIndex(names.index(chosen))
        self.model.blockSignals(False)
        self._apply_model()
        if saved and saved not in names and reply is not None:
            self._say(f"This document was made with the model “{saved}”, which this server does not have; "
                      f"using {chosen}.", error=True)

    def _remember_model(self) -> None:
        doc = self._document()
        if doc is not None and self.model.currentData():
            host.save_document_settings(doc, {"model": self.model.currentData()})

    def _apply_offer(self, offer: capabilities.Offer) -> None:
        """Take the server's offer: its limits for the spin boxes, its upscalers, and (with the chosen
        model) its control types and reference modes."""
        self._offer = offer
        self.steps.setMaximum(offer.max_steps)
        self.batch.setMaximum(offer.max_batch)
        names = ("",) + offer.upscalers  # "": the server's default
        if tuple(self.upscaler.itemData(i) for i in range(self.upscaler.count())) != names:
            current = self.upscaler.currentData()
            self.upscaler.clear()
            for name in names:
                self.upscaler.addItem(name or "server default", name)
            self.upscaler.setCurrentIndex(max(0, self.upscaler.findData(current)) if current else 0)
        self._apply_model()

    def model_offer(self) -> models.Offer:
        """What the docker offers with the chosen model (the server's offer when it says nothing of it)."""
        name = self.model.currentData() or None
        picked = plan.model_of(self.worker.models, name)
        return models.offer(picked[0] if picked else name, picked[1] if picked else None, self._offer)

    def _prompt_words(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The LoRA and embedding names the prompt fields complete: those of the chosen model's family."""
        offer = self.model_offer()
        return offer.loras, offer.embeddings

    def _job_buttons(self):
        return (self.generate_button, self.remove_button, self.expand_button, self.instruct_button,
                self.upscale_button)

    def _apply_model(self) -> None:
        """Offer only what the chosen model can do: what it cannot is switched off, its tooltip says why."""
        offer = self.model_offer()
        for combo, choices, preferred in ((self.control_type, offer.control_types, "lineart"),
                                          (self.reference_mode, offer.reference_modes, "reference")):
            current = combo.currentText()
            if tuple(combo.itemText(i) for i in range(combo.count())) != choices:
                combo.clear()
                combo.addItems(choices)
            combo.setCurrentText(capabilities.pick(choices, current, preferred))
        idle = self.job is None
        # Not connected (or connecting): a job would only be refused, so the buttons wait for the server, and
        # their tooltip says why (the shortcut still answers with that sentence).
        offline = "" if self.worker.state == "connected" else self.worker.not_ready()
        for widget, why, tip in ((self.generate_button, offer.generate, GENERATE_TIP),
                                 (self.remove_button, offer.remove, REMOVE_TIP),
                                 (self.expand_button, offer.expand, EXPAND_TIP),
                                 (self.instruct_button, offer.instruct, INSTRUCT_TIP),
                                 (self.upscale_button, "", UPSCALE_TIP)):
            widget.setEnabled(idle and not (offline or why))
            widget.setToolTip(offline or why or tip)
        for widget, why, tip in ((self.control_add, offer.control, ""), (self.reference_add, offer.reference, ""),
                                 (self.negative, offer.negative_prompt, NEGATIVE_TIP),
                                 (self.image_guidance, offer.image_guidance, IMAGE_GUIDANCE_TIP)):
            widget.setEnabled(not why)
            widget.setToolTip(why or tip)
        self._show_preprocess(self.control_type.currentText())

    def _show_preprocess(self, control_type: str) -> None:
        """Preprocess and Make map only for a type the server can make a map for."""
        why = self._offer.why_no_preprocessor(control_type) if control_type else "Pick a control type."
        offline = "" if self.worker.state == "connected" else self.worker.not_ready()  # the server makes maps
        self.control_pre.setEnabled(not why)
        self.make_map.setEnabled(not (offline or why))
        if why:
            self.control_pre.setChecked(False)
        self.control_pre.setToolTip(why or "Run the type's preprocessor on the layer when the job runs")
        self.make_map.setToolTip(offline or why
                                 or "Run the type's preprocessor on the layer and add the map as a new layer")

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #d04040;" if error else "")
        self.message.setText(text)


GENERATE_TIP = "Paint the prompt: into the selection, else the whole picture (below 100% strength: refine it)"
REMOVE_TIP = "Take the selection out: fill it with its surroundings (no prompt needed)"
EXPAND_TIP = "Grow the canvas by these pixels and paint the new band (one new layer; your layers keep their pixels)"
INSTRUCT_TIP = ("Edit by instruction: the prompt says what to change (“make it winter”); only the selection "
                "changes, else the whole picture")
UPSCALE_TIP = "Upscale the whole picture (refine: diffuse it again with the prompt)"
NEGATIVE_TIP = "What to avoid"
IMAGE_GUIDANCE_TIP = "Instruct: how closely the edit keeps to the picture (1: not held to it; higher: closer)"

FILL_LABELS = (("Default", None), ("As it is", "none"), ("Grey", "neutral"), ("Blur of the surroundings", "blur"),
               ("Edge pixels", "border"), ("Inpainted surroundings", "inpaint"))


def _slider(low: int, high: int, value: int, text, widest: tuple = ()):
    """A horizontal slider and the label that shows its value (``text(value)``), wide enough for the longest
    of ``widest`` so that the slider keeps its length while it is dragged."""
    slider = W.QSlider(HORIZONTAL)
    slider.setRange(low, high)
    slider.setValue(value)
    label = W.QLabel(text(value))
    metrics = label.fontMetrics()
    label.setMinimumWidth(max(metrics.horizontalAdvance(t) for t in (text(low), text(high), *widest)))
    slider.valueChanged.connect(lambda number: label.setText(text(number)))
    return slider, label


def _strength_text(value: int) -> str:
    return f"{value}%" + (" fill" if value == 100 else " refine")


def _row(*widgets):
    """Widgets side by side, the first one stretching."""
    row = W.QHBoxLayout()
    for index, widget in enumerate(widgets):
        row.addWidget(widget, 0 if index else 1)
    return row


def _sentence_label():
    """A label for sentences: wrapped, and never wider than the docker (a long path or address in it is
    cut at the edge, not allowed to push the docker wider)."""
    label = W.QLabel()
    label.setWordWrap(True)
    label.setMinimumWidth(1)
    return label


def _unit_list():
    """A list of a few one-line entries (control units, references): three in sight, a long one elided (its
    tooltip holds it whole), never a horizontal scroll bar taking the room of a line."""
    widget = W.QListWidget()
    widget.setHorizontalScrollBarPolicy(qt.SCROLL_BAR_OFF)
    widget.setMaximumHeight(widget.fontMetrics().lineSpacing() * 3 + 2 * widget.frameWidth() + 4)
    return widget


def _add_entry(widget, text: str) -> None:
    item = W.QListWidgetItem(text)
    item.setToolTip(f"{text} (double-click to remove)")
    widget.addItem(item)


def _combo(tip: str):
    combo = W.QComboBox()
    combo.setSizeAdjustPolicy(qt.COMBO_SHRINKS)
    combo.setMinimumContentsLength(6)
    combo.setToolTip(tip)
    return combo


def _tool(text: str, tip: str):
    """A small button for a symbol (a push button would take its 80-pixel minimum for "↻")."""
    button = W.QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    return button


def _spin(low: int, high: int, value: int):
    spin = W.QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _percent(value: int, prefix: str):
    spin = _spin(0, 100, value)
    spin.setPrefix(prefix)
    spin.setSuffix("%")
    spin.setSingleStep(5)
    return spin


def _double(low: float, high: float, value: float, prefix: str = ""):
    spin = W.QDoubleSpinBox()
    spin.setPrefix(prefix)
    spin.setRange(low, high)
    spin.setSingleStep(0.05)
    spin.setValue(value)
    return spin
