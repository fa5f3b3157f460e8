"""What a model's UNet predicts (noise or velocity) and whether it was trained to zero terminal SNR.

v-prediction checkpoints (SD2 768, NoobAI / Illustrious v-pred) sample wrongly with an epsilon
scheduler. Where a checkpoint says what it is, it is read from it: a single file's ``v_pred`` (and
``ztsnr``) marker keys, as NoobAI ships them, or a diffusers folder's scheduler config
(``prediction_type``, ``rescale_betas_zero_snr``, as SD2 ships it). A model's config entry
(``prediction_type``, ``zero_terminal_snr``) wins over both. The result becomes scheduler settings
applied to every sampler built for the model, and a guidance rescale for zero-terminal-SNR models.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

PREDICTION_TYPES = ("epsilon", "v_prediction")
V_PRED_KEY, ZTSNR_KEY = "v_pred", "ztsnr"
ZTSNR_GUIDANCE_RESCALE = 0.7  # what the zero-terminal-SNR paper (Lin et al. 2023) recommends


@dataclass(frozen=True)
class Prediction:
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    guidance_rescale: float = 0.0

    def scheduler_overrides(self) -> dict:
        """Settings every sampler of the model is built with (on top of the model's own config)."""
        out: dict = {"prediction_type": self.prediction_type}
        if self.zero_terminal_snr:
            # Zero terminal SNR needs the schedule to start at the last timestep (the pure-noise one).
            out.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        return out


def from_checkpoint(source: str) -> dict:
    """What a local checkpoint says of itself: ``{"prediction_type": ..., "zero_terminal_snr": ...}``, only
    the keys it states (an empty dict for a hub id or an unreadable file)."""
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return {}
    return dict(_read(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> tuple:
    said: dict = {}
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as weights:
                keys = set(weights.keys())
            if V_PRED_KEY in keys:
                said["prediction_type"] = "v_prediction"
            if ZTSNR_KEY in keys:
                said["zero_terminal_snr"] = True
        elif Path(path).is_dir():
            config = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
            if "prediction_type" in config:
                said["prediction_type"] = config["prediction_type"]
            if config.get("rescale_betas_zero_snr"):
                said["zero_terminal_snr"] = True
    except Exception:  # a truncated or foreign file says nothing; loading it will say what is wrong
        return ()
    return tuple(said.items())


def resolve(spec, scheduler_config: dict | None = None) -> Prediction:
    """The model's prediction: its config entry's settings over what its checkpoint says (a loaded
    model's ``scheduler_config`` speaks for checkpoints that cannot be read here, e.g. hub ids)."""
    said = from_checkpoint(spec.source)
    if scheduler_config and not said:
        said = {"prediction_type": scheduler_config.get("prediction_type", "epsilon"),
                "zero_terminal_snr": bool(scheduler_config.get("rescale_betas_zero_snr"))}
    prediction_type = spec.prediction_type or said.get("prediction_type", "epsilon")
    ztsnr = spec.zero_terminal_snr if spec.zero_terminal_snr is not None else said.get("zero_terminal_snr", False)
    rescale = spec.guidance_rescale if spec.guidance_rescale is not None else (ZTSNR_GUIDANCE_RESCALE if ztsnr
                                                                               else 0.0)
    return Prediction(prediction_type, bool(ztsnr), float(rescale))
