"""Qt from Krita: PyQt5 in Krita 5, PyQt6 in Krita 6 (which refuses PyQt5 imports).

Everything else imports Qt names from here. Enum spellings that differ are resolved once.
"""

from __future__ import annotations

try:
    from PyQt6 import QtCore, QtGui, QtWidgets  # Krita 6
    QT6 = True
except ImportError:
    from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: F401  (Krita 5; QtWidgets is for the docker)
    QT6 = False

Qt = QtCore.Qt
QObject, QTimer, QEventLoop, pyqtSignal = QtCore.QObject, QtCore.QTimer, QtCore.QEventLoop, QtCore.pyqtSignal
QImage, QPixmap = QtGui.QImage, QtGui.QPixmap

# PyQt6 only has scoped enums; PyQt5 has both spellings for most of these.
FORMAT_RGBA8888 = QImage.Format.Format_RGBA8888 if QT6 else QImage.Format_RGBA8888
SMOOTH = Qt.TransformationMode.SmoothTransformation if QT6 else Qt.SmoothTransformation
IGNORE_ASPECT = Qt.AspectRatioMode.IgnoreAspectRatio if QT6 else Qt.IgnoreAspectRatio
KEEP_ASPECT = Qt.AspectRatioMode.KeepAspectRatio if QT6 else Qt.KeepAspectRatio
HORIZONTAL = Qt.Orientation.Horizontal if QT6 else Qt.Horizontal
USER_ROLE = Qt.ItemDataRole.UserRole if QT6 else Qt.UserRole
TOOLTIP_ROLE = Qt.ItemDataRole.ToolTipRole if QT6 else Qt.ToolTipRole
ALIGN_CENTER = Qt.AlignmentFlag.AlignCenter if QT6 else Qt.AlignCenter
SCROLL_BAR_OFF = Qt.ScrollBarPolicy.ScrollBarAlwaysOff if QT6 else Qt.ScrollBarAlwaysOff
# A combo box as narrow as a few characters, whatever it lists (a long model or layer name is elided, not
# allowed to widen a docker painters keep narrow).
COMBO_SHRINKS = (QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon if QT6
                 else QtWidgets.QComboBox.AdjustToMinimumContentsLengthWithIcon)


def image_bytes(image) -> bytes:
    """The raw bytes of a QImage (tightly packed RGBA8888 expected)."""
    image = image.convertToFormat(FORMAT_RGBA8888)
    width, height = image.width(), image.height()
    bits = image.constBits()
    size = image.bytesPerLine() * height
    if QT6:
        raw = bytes(bits.asstring(size)) if hasattr(bits, "asstring") else bytes(bits)[:size]
    else:
        bits.setsize(size)
        raw = bytes(bits)
    stride = image.bytesPerLine()
    if stride == width * 4:
        return raw
    return b"".join(raw[y * stride:y * stride + width * 4] for y in range(height))


def rgba_image(data: bytes, width: int, height: int):
    """A QImage that owns a copy of ``data`` (RGBA8888 rows)."""
    return QImage(data, width, height, width * 4, FORMAT_RGBA8888).copy()


def scaled_rgba(data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
    """Resize RGBA bytes with Qt's smooth filter (safe off the UI thread: QImage is not a widget)."""
    image = rgba_image(data, width, height).scaled(new_width, new_height, IGNORE_ASPECT, SMOOTH)
    return image_bytes(image)
