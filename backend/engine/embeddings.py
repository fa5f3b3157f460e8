"""Textual-inversion embeddings: found in folders (A1111's ``embeddings/`` layout), named in prompts.

An embedding is a file of learned token vectors, named after the file (``easynegative.safetensors`` is
``easynegative``). SD1.5 files hold one set of vectors (A1111's ``string_to_param`` / ``emb_params``, or
diffusers' one-entry ``{token: vectors}``); SDXL files hold one per text encoder (``clip_l``, ``clip_g``).
``.pt`` / ``.bin`` files are read with torch's weights-only loader, so one that carries code is refused.

A prompt uses one by its name as a word (A1111) or as ``embedding:name`` (ComfyUI; an unknown name
there is an error). The first time a model meets an embedding, its vectors are added to the model's
tokenizers and text encoders under a token no prompt text can contain (``<easel-ti-N>``), and the
name in the prompt is replaced by that token, so words that merely contain the name stay words.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from backend import model_files
from shared.errors import shown
from shared.prompt_syntax import Piece

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")
EXPLICIT = re.compile(r"embedding:([\w.\-]+)")


class EmbeddingError(Exception):
    """An embedding cannot be found or read; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str, field: str = "prompt"):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass(frozen=True)
class Embedding:
    name: str
    family: str  # sd15 or sdxl
    path: str
    vectors: int  # tokens it takes in a prompt


def read_vectors(path: str) -> dict:
    """The embedding file's tensors: ``{"clip_l": ..., "clip_g": ...}`` (SDXL) or ``{"vectors": ...}``."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        data = load_file(path)
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise ValueError("not a dict of tensors")
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": _matrix(data["clip_l"]), "clip_g": _matrix(data["clip_g"])}
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        return {"vectors": _matrix(next(iter(params.values())))}
    if "emb_params" in data:  # A1111 .safetensors
        return {"vectors": _matrix(data["emb_params"])}
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(tensors) == 1:  # diffusers: {token: vectors}
        return {"vectors": _matrix(tensors[0])}
    raise ValueError(f"no embedding vectors among its keys ({', '.join(map(str, list(data)[:5]))})")


def _matrix(tensor):
    tensor = tensor.detach().float()
    return tensor[None] if tensor.dim() == 1 else tensor


def scan(folders: list[str]) -> dict[str, Embedding]:
    """Every readable embedding file under ``folders``, by name (the first of a name wins); files that
    are not embeddings are skipped with a warning."""
    found: dict[str, Embedding] = {}
    for folder in folders:
        for path in model_files.walk(Path(folder)):  # linked folders too, as the model folders
            if not path.is_file() or path.suffix.lower() not in SUFFIXES or path.stem in found:
                continue
            try:
                vectors = read_vectors(str(path))
            except Exception as exc:  # a foreign or broken file must not stop the server
                log.warning("skipping %s: not a textual-inversion embedding (%s)", path, exc)
                continue
            family = "sdxl" if "clip_g" in vectors else "sd15"
            found[path.stem] = Embedding(path.stem, family, str(path), int(next(iter(vectors.values())).shape[0]))
    return found


def explicit_names(text: str) -> list[str]:
    """Names written as ``embedding:name`` (a ``.pt`` / ``.safetensors`` suffix ignored)."""
    return [_stem(match) for match in EXPLICIT.findall(text)]


def _stem(name: str) -> str:
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def substitute(pieces: tuple[Piece, ...], tokens: dict[str, str]) -> tuple[Piece, ...]:
    """The pieces with each embedding's name (as a word, or as ``embedding:name``) replaced by its token."""
    if not tokens:
        return pieces
    names = "|".join(re.escape(name) for name in sorted(tokens, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w\-:])(?:embedding:)?({names})(?:\.safetensors|\.pt|\.bin)?(?![\w\-])")
    return tuple((pattern.sub(lambda match: tokens[match.group(1)], text), weight) for text, weight in pieces)


def mentioned(pieces: tuple[Piece, ...], names) -> list[str]:
    """The known ``names`` a prompt uses (as words or explicitly)."""
    text = " ".join(text for text, _ in pieces)
    return [name for name in names if re.search(rf"(?<![\w\-]){re.escape(name)}(?![\w\-])", text)]


class Embeddings:
    """The configured embeddings, and which of them each loaded model has taken in."""

    def __init__(self, folders: list[str]):
        self.folders = list(folders)
        # Read once, at start: `welcome` lists them, and the event loop must not wait for a folder scan.
        self.found: dict[str, Embedding] = scan(self.folders)
        self._tokens: dict[str, dict[str, str]] = {}  # model name -> embedding name -> token (worker thread)
        self._count = 0

    def names(self, family: str | None) -> list[str]:
        """Embeddings usable with a family's models (every one when the family is unknown)."""
        return sorted(name for name, item in self.found.items() if family is None or item.family == family)

    def listing(self) -> list[dict]:
        """``[{name, family, vectors}]`` for ``welcome`` and ``models``."""
        return [{"name": name, "family": item.family, "vectors": item.vectors}
                for name, item in sorted(self.found.items())]

    def check(self, text: str, family: str | None, field: str) -> None:
        """Refuse ``embedding:name`` references to names this family has no embedding for."""
        usable = set(self.names(family))
        for name in explicit_names(text):
            if name not in usable:
                other = self.found.get(name)
                why = f" (it is an {other.family} embedding)" if other and family else ""
                raise EmbeddingError("unknown_embedding", f"`{field}` names embedding {shown(name)}, which this server "
                                     f"does not have for {family or 'this model'}{why}; available: "
                                     f"{', '.join(sorted(usable)) or 'none'}", field)

    def apply(self, model, pieces: tuple[Piece, ...], field: str) -> tuple[Piece, ...]:
        """The pieces with the model's embeddings in them as tokens, loading those the prompt names."""
        text = " ".join(text for text, _ in pieces)
        self.check(text, model.family, field)
        usable = self.names(model.family)
        wanted = mentioned(pieces, usable)
        if not wanted:
            return pieces
        loaded = self._tokens.setdefault(model.name, {})
        for name in wanted:
            if name not in loaded:
                loaded[name] = self._load(model, self.found[name])
        return substitute(pieces, {name: loaded[name] for name in wanted})

    def _load(self, model, item: Embedding) -> str:
        """Add the embedding's vectors to the model's text encoders under a new token."""
        self._count += 1
        token = f"<easel-ti-{self._count}>"
        pipe = model.base
        try:
            vectors = read_vectors(item.path)
            if model.family == "sdxl":
                pipe.load_textual_inversion({"emb_params": vectors["clip_l"]}, token=token,
                                            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
                pipe.load_textual_inversion({"emb_params": vectors["clip_g"]}, token=token,
                                            tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
            else:
                pipe.load_textual_inversion({"emb_params": vectors["vectors"]}, token=token,
                                            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
        except Exception as exc:
            raise EmbeddingError("model_load_failed", f"embedding {item.name!r} ({item.path}) could not be loaded "
                                 f"into model {model.name!r}: {exc}") from exc
        log.info("embedding %s loaded into %s as %s", item.name, model.name, token)
        return token
