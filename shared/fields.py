"""Field specs: how one value of a message is checked, defaulted and documented in the JSON Schema."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import MAX_ECHO, ProtocolError, shown

_JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


@dataclass
class Field:
    """One field of a message: its JSON type, constraints, default, and a line of documentation."""

    type: str
    doc: str = ""
    required: bool = False
    default: Any = None
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    max_length: int | None = None
    items: "Field | None" = None
    fields: "dict[str, Field] | None" = None
    min_items: int | None = None
    extra: bool = False  # for objects: allow unlisted keys
    below: str = ""  # what to do instead of a value under the minimum, for a habit from elsewhere

    def check(self, value: Any, name: str) -> Any:
        """Return ``value`` if it satisfies this field, else raise ProtocolError naming ``name``."""
        if value is None:
            if self.nullable:
                return None
            # Clients in JavaScript meet this most: JSON.stringify writes NaN and Infinity as null.
            hint = " (JSON has no NaN or Infinity: JavaScript writes them as null)" \
                if self.type in ("integer", "number") else ""
            hint += "" if self.required else ": leave it out instead"
            raise ProtocolError("invalid_field", f"`{name}` must not be null{hint}", name)
        expected = _JSON_TYPES[self.type]
        article = "an" if self.type[0] in "aeiou" else "a"
        if isinstance(value, bool) and self.type in ("integer", "number"):
            raise ProtocolError("invalid_field", f"`{name}` must be {article} {self.type}, not a boolean", name)
        if self.type == "number" and isinstance(value, float) and value != value:
            raise ProtocolError("invalid_field", f"`{name}` must be a number, not NaN", name)
        if not isinstance(value, expected):
            raise ProtocolError("invalid_field", f"`{name}` must be {article} "
                                f"{self.type}, got {type(value).__name__}", name)
        if self.minimum is not None and value < self.minimum:
            hint = f" ({self.below})" if self.below else ""
            raise ProtocolError("invalid_field", f"`{name}` must be at least {self.minimum}, got {shown(value)}{hint}",
                                name)
        if self.maximum is not None and value > self.maximum:
            raise ProtocolError("invalid_field", f"`{name}` must be at most {self.maximum}, got {shown(value)}", name)
        if self.choices is not None and value not in self.choices:
            raise ProtocolError("invalid_field", f"`{name}` must be one of {', '.join(map(str, self.choices))}; "
                                f"got {shown(value)}", name)
        if self.type == "string" and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # JSON can carry lone UTF-16 surrogates ("\ud800"); text cannot
                raise ProtocolError("invalid_field", f"`{name}` is not valid Unicode (it holds a lone UTF-16 "
                                    "surrogate)", name) from None
        if self.max_length is not None and len(value) > self.max_length:
            unit = "characters (Unicode code points)" if self.type == "string" else "items"
            raise ProtocolError("invalid_field", f"`{name}` is longer than {self.max_length} {unit}", name)
        if self.pattern is not None and not re.match(self.pattern, value):
            raise ProtocolError("invalid_field", f"`{name}` must match {self.pattern}", name)
        if self.min_items is not None and len(value) < self.min_items:
            raise ProtocolError("invalid_field", f"`{name}` needs at least {self.min_items} item(s)", name)
        if self.items is not None:
            value = [self.items.check(item, f"{name}[{i}]") for i, item in enumerate(value)]
        if self.fields is not None:
            value = check_fields(value, self.fields, prefix=f"{name}.", extra=self.extra)
        return value

    def schema(self) -> dict:
        """This field as a JSON Schema fragment."""
        out: dict[str, Any] = {"type": [self.type, "null"] if self.nullable else self.type}
        if self.doc:
            out["description"] = self.doc
        for key, attr in (("minimum", self.minimum), ("maximum", self.maximum), ("pattern", self.pattern),
                          ("maxLength", self.max_length), ("minItems", self.min_items)):
            if attr is not None:
                out[key] = attr
        if self.choices is not None:
            out["enum"] = list(self.choices) + ([None] if self.nullable else [])
        if self.default is not None:
            out["default"] = self.default
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.fields is not None:
            out.update(object_schema(self.fields, extra=self.extra))
        return out


OTHER_NAMES = {"cfg_scale": "guidance", "guidance_scale": "guidance", "image_cfg_scale": "image_guidance",
               "image_guidance_scale": "image_guidance", "denoising_strength": "strength",
               "num_inference_steps": "steps", "sampler_name": "sampler", "scheduler": "sampler",
               "batch_size": "batch", "num_images_per_prompt": "batch", "negative": "negative_prompt",
               "mask_blur": "mask_feather", "inpaint_full_res_padding": "mask_padding", "clip_skip_layers": "clip_skip",
               "init_images": "image", "input_image": "image", "weight": "scale", "guidance_start": "start",
               "guidance_end": "end", "processor_res": "resolution", "module": "preprocess"}
"""Names the A1111 API (its ControlNet units' too) and diffusers give a submit's fields, which habit sends here
(`cfg_scale`, a unit's `weight` were only "unknown")."""


def check_fields(message: dict, fields: dict[str, Field], *, prefix: str = "", extra: bool = False) -> dict:
    """Validate ``message`` against ``fields``; return a copy with defaults filled in."""
    out = {}
    for name, spec in fields.items():
        if name in message:
            out[name] = spec.check(message[name], prefix + name)
        elif spec.required:
            raise ProtocolError("invalid_field", f"`{prefix + name}` is required", prefix + name)
        elif spec.default is not None:
            out[name] = spec.default
    unknown = sorted(set(message) - set(fields))
    if unknown and not extra:
        name = prefix + unknown[0]
        if len(name) > MAX_ECHO:  # an error never echoes a large input: the key is cut in both places
            name = name[:MAX_ECHO - 1] + "…"
        # camelCase is how JavaScript names things: say the protocol's name for it (outputFormat: output_format)
        snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", unknown[0]).lower()
        hint = f" (did you mean `{prefix + snake}`?)" if snake != unknown[0] and snake in fields else ""
        other = OTHER_NAMES.get(snake)
        if not hint and other in fields:
            hint = f" (`{prefix + other}` is its name here)"
        raise ProtocolError("invalid_field", f"unknown field `{name}`{hint}", name)
    for name in unknown:
        out[name] = message[name]
    return out


def object_schema(fields: dict[str, Field], *, extra: bool = False) -> dict:
    return {
        "type": "object",
        "properties": {name: spec.schema() for name, spec in fields.items()},
        "required": [name for name, spec in fields.items() if spec.required],
        "additionalProperties": extra,
    }


_ITEM = re.compile(r"(\w+)\[(\d+)\](?:\.(\w+))?")


def item_field(name: str | None) -> tuple[str, int, str | None] | None:
    """A list item's field name split up: ``control[1].scale`` is ("control", 1, "scale"),
    ``references[0]`` is ("references", 0, None); None for a field outside a list."""
    match = _ITEM.fullmatch(name or "")
    return (match[1], int(match[2]), match[3]) if match else None
