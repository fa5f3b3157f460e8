"""The Krita adapter: the only module that imports ``krita``.

Reads what a job needs from a document (colour model, selection, pixels of a box, layers) and
writes results back as new layers. Everything here runs on Krita's UI thread; conversions and
encoding happen in the worker (``pixels``, ``plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita  # noqa: F401

from . import models, pixels
from .plan import Box
from .qt import QtCore

GROUP_NAME = "Easel"
SETTINGS_GROUP = "easel"
ANNOTATION = models.ANNOTATION


@dataclass
class Canvas:
    """A document's size and colour format, checked to be something Easel can convert."""

    width: int
    height: int
    depth: str
    linear: bool
    profile: str = ""
    managed: bool = False  # colours go through Krita's colour management (primaries other than sRGB's)
    model: str = "RGBA"  # another only for a layer of its own colour space (read through Krita's conversion)

    def to_rgba8(self, data: bytes, width: int, height: int) -> bytes | None:
        """Document pixels as 8-bit sRGB RGBA, converted by Krita now (UI thread) for a managed profile;
        None for the others, which ``pixels.to_rgba8`` converts exactly on the worker."""
        if not self.managed:
            return None
        return pixels.swap_red_blue(_convert(data, width, height, (self.model, self.depth, self.profile), SRGB8))

    def from_rgba8(self, rgba: bytes, width: int, height: int) -> bytes:
        """8-bit sRGB RGBA as document pixels, through Krita's colour management (managed profiles)."""
        return _convert(pixels.swap_red_blue(rgba), width, height, SRGB8, ("RGBA", self.depth, self.profile))

    def reader(self) -> Converter:
        """Many strips of document pixels to 8-bit sRGB RGBA (managed profiles); close() it after."""
        return Converter((self.model, self.depth, self.profile), SRGB8, out=pixels.swap_red_blue)

    def writer(self) -> Converter:
        """Many strips of 8-bit sRGB RGBA to document pixels (managed profiles); close() it after."""
        return Converter(SRGB8, ("RGBA", self.depth, self.profile), into=pixels.swap_red_blue)


class Converter:
    """Krita's colour conversion of strip after strip through one scratch document.

    Making a scratch document and closing it costs the UI thread about 0.1-0.15 s (measured on 6000-px
    strips), more than converting a megapixel; a 6000x4000 read made one per strip and blocked Krita
    for 0.37-0.56 s a turn. Here the document is made once: each strip goes in as a fresh layer of the
    empty document turned back to the source space, and the whole document is converted, as
    ``_convert`` does. ``into`` / ``out`` rearrange bytes before and after (sRGB RGBA <-> Krita's BGRA)."""

    def __init__(self, source: tuple, target: tuple, into=None, out=None):
        self.source, self.target, self.into, self.out = source, target, into, out
        self.doc = self.node = None

    def convert(self, data: bytes, width: int, height: int) -> bytes:
        if self.into is not None:
            data = self.into(data)
        doc = self.doc
        if doc is None or doc.width() < width or doc.height() < height:
            self.close()
            doc = self.doc = _scratch(width, height, self.source, self.target)
        else:
            self.node.remove()  # empty again: turning it back to the source space converts nothing
            doc.setColorSpace(*self.source)
        node = self.node = doc.createNode("easel colour", "paintlayer")
        doc.rootNode().addChildNode(node, None)
        node.setPixelData(data, 0, 0, width, height)
        converted = doc.setColorSpace(*self.target)
        doc.waitForDone()
        result = bytes(node.pixelData(0, 0, width, height))
        if not converted or len(result) != width * height * pixels.bytes_per_pixel(self.target[1]):
            raise pixels.UnsupportedColor(_convert_by_hand(self.source[2] if self.source != SRGB8 else self.target[2]))
        return self.out(result) if self.out is not None else result

    def close(self) -> None:
        if self.doc is not None:
            self.doc.close()
            self.doc = self.node = None


def instance():
    return Krita.instance()


def read_setting(key: str, default: str = "") -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, key, default)


def write_setting(key: str, value: str) -> None:
    Krita.instance().writeSetting(SETTINGS_GROUP, key, value)


def document_settings(doc) -> dict:
    """What the document saved for Easel (its model ...): an annotation stored in the .kra."""
    if ANNOTATION not in doc.annotationTypes():
        return {}
    return models.read_saved(bytes(doc.annotation(ANNOTATION)))


def save_document_settings(doc, changes: dict) -> None:
    """Merge ``changes`` into the document's Easel settings; saved with the document (.kra)."""
    saved = document_settings(doc)
    if all(saved.get(key) == value for key, value in changes.items()):
        return  # unchanged: do not mark the document modified
    saved.update(changes)
    doc.setAnnotation(ANNOTATION, "Easel settings", QtCore.QByteArray(models.write_saved(saved)))


def canvas(doc) -> Canvas:
    """The document's size and format; raises pixels.UnsupportedColor for CMYK, Lab, grey ..."""
    model, depth, profile = doc.colorModel(), doc.colorDepth(), doc.colorProfile()
    pixels.check_color(model, depth)
    return Canvas(doc.width(), doc.height(), depth, pixels.is_linear_profile(profile), profile,
                  not pixels.exact_profile(profile))


def layer_canvas(node, info: Canvas) -> Canvas:
    """How to read ``node``'s own pixels (``layer_pixels``): as the document's (``info``), or in the layer's own
    colour space (Layer > Convert Layer Color Space: a grey or 16-bit layer in an 8-bit document, or a layer of
    another document), which Krita's colour management converts when the plugin cannot."""
    model, depth, profile = node.colorModel(), node.colorDepth(), node.colorProfile()
    if (model, depth, profile) == ("RGBA", info.depth, info.profile):
        return info
    exact = model == "RGBA" and depth in pixels.DEPTHS and pixels.exact_profile(profile)
    return Canvas(info.width, info.height, depth, pixels.is_linear_profile(profile), profile, not exact, model)


def is_mask(node) -> bool:
    """A selection, transparency, filter ... mask: one channel of coverage, not a picture."""
    return node.type().endswith("mask")


def pickable_layers(doc) -> list:
    """The layers a control or reference can be made of (the layer pickers): every layer but masks."""
    return [node for node in all_layers(doc) if not is_mask(node)]


SRGB8 = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")


def _convert(data: bytes, width: int, height: int, source: tuple, target: tuple) -> bytes:
    """``data`` (a ``width`` x ``height`` area in colour space ``source``: model, depth, profile) in
    ``target``, converted by Krita's own colour management in a scratch document: the painter's
    document, and its undo history, are not touched.

    The whole scratch document is converted, as Image > Convert Image Color Space does: converting
    only its layer (``Node.setColorSpace``) takes another path in Krita that is off by up to 17-26
    levels from it for 16-bit gamma-2.2 profiles (Adobe RGB-compatible, Wide Gamut), measured."""
    scratch = _scratch(width, height, source, target)
    try:
        node = scratch.createNode("easel colour", "paintlayer")
        scratch.rootNode().addChildNode(node, None)
        node.setPixelData(data, 0, 0, width, height)
        converted = scratch.setColorSpace(*target)
        scratch.waitForDone()
        out = bytes(node.pixelData(0, 0, width, height))
    finally:
        scratch.close()
    if not converted or len(out) != width * height * pixels.bytes_per_pixel(target[1]):
        raise pixels.UnsupportedColor(_convert_by_hand(source[2] if source != SRGB8 else target[2]))
    return out


def _scratch(width: int, height: int, source: tuple, target: tuple):
    """An empty scratch document in colour space ``source`` (not shown, no background layer)."""
    scratch = Krita.instance().createDocument(width, height, "easel-colour", *source[:2], source[2], 72.0)
    if scratch is None or scratch.colorProfile() != source[2]:
        if scratch is not None:
            scratch.close()
        raise pixels.UnsupportedColor(_convert_by_hand(source[2] if source != SRGB8 else target[2]))
    scratch.setBatchmode(True)
    for node in scratch.rootNode().childNodes():  # its background layer would be converted too
        node.remove()
    return scratch


def _convert_by_hand(profile: str) -> str:
    return (f"Krita could not convert this document's colours (profile “{profile}”) to and from sRGB, which the "
            "model works in. Convert it with Image > Convert Image Color Space… to RGB/Alpha with the profile "
            "sRGB-elle-V2-srgbtrc.icc (or a 16-bit/float sRGB one), and try again.")


def selection(doc) -> tuple[Box, bytes] | None:
    """The selection's bounding box and its bytes (one per pixel, soft values kept), or None."""
    sel = doc.selection()
    if sel is None or sel.width() <= 0 or sel.height() <= 0:
        return None
    box = Box(sel.x(), sel.y(), sel.width(), sel.height())
    return box, bytes(sel.pixelData(box.x, box.y, box.width, box.height))


def selection_bytes(doc, box: Box) -> bytes:
    sel = doc.selection()
    return bytes(sel.pixelData(box.x, box.y, box.width, box.height))


_stale: set = set()  # documents whose projection misses a write of ours (ids): refreshed before a read


def flush(doc) -> None:
    """Let Krita finish pending updates so pixel reads see the current picture. Painting, adding and
    removing layers update the projection by themselves; only a document this module marked stale
    gets the whole-image ``refreshProjection()`` (0.2 s and more on a 6000x4000 document)."""
    if id(doc) in _stale:
        _stale.discard(id(doc))
        doc.refreshProjection()
    doc.waitForDone()


def image_pixels(doc, box: Box) -> bytes:
    """The visible picture (all layers merged) in ``box``, in the document's own pixel format."""
    return bytes(doc.pixelData(box.x, box.y, box.width, box.height))


def layer_pixels(node, box: Box) -> bytes:
    """One layer (with its masks and, for groups, its children) in ``box``, document format."""
    return bytes(node.projectionPixelData(box.x, box.y, box.width, box.height))


def frame(doc) -> int | None:
    """The frame on the timeline whose picture the document shows now, when any of its layers is animated
    (None otherwise): reads see that frame only."""
    return doc.currentTime() if any(node.animated() for node in all_layers(doc)) else None


def layer_bounds(doc, node) -> Box:
    """The layer's painted area, clipped to the canvas (the whole canvas if it is empty)."""
    rect = node.bounds()
    x0, y0 = max(0, rect.x()), max(0, rect.y())
    x1, y1 = min(doc.width(), rect.x() + rect.width()), min(doc.height(), rect.y() + rect.height())
    if x1 <= x0 or y1 <= y0:
        return Box(0, 0, doc.width(), doc.height())
    return Box(x0, y0, x1 - x0, y1 - y0)


def all_layers(doc) -> list:
    """Every layer of the document, top to bottom, depth first (for the layer pickers)."""
    out = []

    def walk(node):
        for child in reversed(node.childNodes()):
            out.append(child)
            walk(child)

    walk(doc.rootNode())
    return out


def find_layer(doc, unique_id: str):
    for node in all_layers(doc):
        if node.uniqueId().toString() == unique_id:
            return node
    return None


def owner(doc, node):
    """The open document that holds ``node`` (a layer the painter picked for a control or reference):
    ``doc`` itself when it is there, else another open document, or None once the layer was deleted or
    its document closed (Krita still answers for such a node, with pixels that are not on any canvas)."""
    unique_id = node.uniqueId().toString()
    for candidate in [doc, *Krita.instance().documents()]:
        if is_open(candidate) and find_layer(candidate, unique_id) is not None:
            return candidate
    return None


def holds(doc, layer) -> bool:
    """Whether ``layer`` is still in ``doc``: the painter may have deleted it, or the group it was in."""
    return is_open(doc) and find_layer(doc, layer.uniqueId().toString()) is not None


def find_easel_group(doc):
    """The top-level "Easel" group that holds results, or None."""
    for node in doc.rootNode().childNodes():
        if node.name() == GROUP_NAME and node.type() == "grouplayer":
            return node
    return None


def remove_layer(doc, layer) -> None:
    """Take a result layer off the canvas, and its Easel group with it when that would be left empty: the
    group alone is removed then, so the discard is one undo step, as the result's arrival was."""
    parent = layer.parentNode()
    if parent is not None and parent.name() == GROUP_NAME and parent.type() == "grouplayer" \
            and [child.uniqueId() for child in parent.childNodes()] == [layer.uniqueId()]:
        parent.remove()
    else:
        layer.remove()  # updates the projection by itself


def grow_canvas(doc, left: int, top: int, right: int, bottom: int, width: int, height: int) -> None:
    """Grow a ``width`` x ``height`` canvas by the sides given, the picture moving to (left, top); a
    document of another size (already grown) is left as it is."""
    if (doc.width(), doc.height()) != (width, height):
        return
    doc.resizeImage(-left, -top, width + left + right, height + top + bottom)
    _stale.add(id(doc))  # a resized image: the next read refreshes its projection first


def scale_canvas(doc, width: int, height: int, new_width: int, new_height: int) -> None:
    """Scale a ``width`` x ``height`` document (all its layers) to the new size; a document of another
    size (already scaled) is left as it is."""
    if (doc.width(), doc.height()) != (width, height):
        return
    xres, yres = doc.xRes(), doc.yRes()
    doc.scaleImage(new_width, new_height, int(xres), int(yres), "Bicubic")
    doc.waitForDone()
    # Krita 5's scaleImage turns the resolution it is given into whole multiples of 72 ppi (300 -> 288, 96 ->
    # 72, measured): the document keeps its own, as Image > Scale Image To New Size does by default.
    if (doc.xRes(), doc.yRes()) != (xres, yres):
        doc.setXRes(xres)
        doc.setYRes(yres)
    _stale.add(id(doc))  # a scaled image: the next read refreshes its projection first


def new_document_like(canvas: Canvas, width: int, height: int, name: str, resolution: float):
    """A new RGBA document of the size given in ``canvas``'s depth and profile (what the source document
    had when the job read it: the painter may have closed that one since), shown in a window if any."""
    new = Krita.instance().createDocument(width, height, name, "RGBA", canvas.depth, canvas.profile, resolution)
    window = Krita.instance().activeWindow()
    if window is not None:  # headless Krita has none
        window.addView(new)
    return new


def is_open(doc) -> bool:
    """False once the painter closed the document (Krita then answers None for its layers)."""
    return doc.rootNode() is not None


def new_layer(doc, name: str):
    """A paint layer not in the document yet: filled first, then attached (one projection update)."""
    return doc.createNode(name, "paintlayer")


def write_pixels(layer, data: bytes, x: int, y: int, width: int, height: int) -> None:
    layer.setPixelData(data, x, y, width, height)


def attach(doc, layer, parent=None, above=None) -> None:
    """Put a filled layer into the document: one undo step, so one Undo takes the result away whole.
    Without an Easel group the layer goes in inside a new one: the group is filled before it joins the
    document, since making it there first was an undo step of its own (Undo left an empty group behind,
    and Krita recomposited the canvas twice). ``addChildNode`` recomposites the whole canvas and waits
    for it, so no refresh is needed after it (nor possible in parts: Krita 5's scripting API has no call
    that updates only a part of the canvas)."""
    if parent is None:
        parent = find_easel_group(doc)
        if parent is None:
            group = doc.createGroupLayer(GROUP_NAME)
            group.setChildNodes([layer])  # outside the document: no undo step, no recomposite
            root = doc.rootNode()
            children = root.childNodes()
            root.addChildNode(group, children[-1] if children else None)
            return
    if not parent.visible():  # a painter who hid the group would not see the result that is said to be added
        parent.setVisible(True)  # shown by the recomposite below (setVisible alone does not update the canvas)
    if above is None:
        children = parent.childNodes()
        above = children[-1] if children else None
    parent.addChildNode(layer, above)
