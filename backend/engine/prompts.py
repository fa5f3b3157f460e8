"""Prompt encoding: A1111 emphasis, prompts longer than the text encoder's 77 tokens, BREAK, clip skip.

A prompt is parsed (``shared.prompt_syntax``) into weighted pieces, embeddings are put in as their
tokens (``embeddings``), and the result is encoded one of two ways:

* a prompt (and negative prompt) without emphasis that fits in one chunk, at clip skip 1, goes through
  the pipeline's own ``encode_prompt`` with the arguments its ``__call__`` would use: the numbers are
  exactly those of passing the words to the pipeline;
* anything else goes through compel's embeddings provider: each piece's tokens weighted, the prompt cut
  into 77-token chunks at phrase boundaries and at ``BREAK``, the chunks' embeddings joined, positive
  and negative padded to the same length. SDXL runs both text encoders that way (the pooled embedding
  comes from the second, over the prompt's first chunk, as SDXL pipelines do).

Clip skip counts as A1111 does: 1 is the text encoder's last layer (SD1.5) or the model's usual
penultimate layer (SDXL), each step up one layer earlier.
"""

from __future__ import annotations

from types import SimpleNamespace

from shared import prompt_syntax
from shared.prompt_syntax import Piece

CHUNK = 75  # tokens of text per 77-token chunk (begin and end markers take two)


class SkippedEncoder:
    """A text encoder whose hidden states end ``skip`` layers early: compel reads its usual layer of
    them (the last, or the penultimate), which is then that many layers further from the end."""

    def __init__(self, encoder, skip: int):
        self.encoder, self.skip = encoder, skip

    @property
    def device(self):
        return self.encoder.device

    @property
    def dtype(self):
        return self.encoder.dtype

    @property
    def text_model(self):
        # compel normalises with ``text_model.final_layer_norm``; transformers 5's CLIPTextModel has no
        # ``text_model`` and holds ``final_layer_norm`` itself
        return getattr(self.encoder, "text_model", self.encoder)

    def __call__(self, input_ids, attention_mask=None, output_hidden_states=False, return_dict=True):
        out = self.encoder(input_ids, attention_mask, output_hidden_states=True, return_dict=True)
        states = out.hidden_states[:len(out.hidden_states) - self.skip] if self.skip else out.hidden_states
        fields = {"hidden_states": states, "last_hidden_state": out.last_hidden_state}
        for key in ("pooler_output", "text_embeds"):  # pooled embeddings: always the last layer's
            if getattr(out, key, None) is not None:
                fields[key] = getattr(out, key)
        return SimpleNamespace(**fields)


def encoder_layers(pipe) -> int:
    return int(pipe.text_encoder.config.num_hidden_layers)


def fits(pipe, pieces: tuple[Piece, ...] | None) -> bool:
    """Whether a prompt's tokens fit in one chunk for each of the pipeline's tokenizers."""
    if not pieces:
        return True
    text = prompt_syntax.plain(pieces)
    _no_long_prompt_warning(pipe)
    for tokenizer in _tokenizers(pipe):
        ids = tokenizer(pipe.maybe_convert_prompt(text, tokenizer), add_special_tokens=False, verbose=False).input_ids
        if len(ids) > CHUNK:
            return False
    return True


def is_plain(pipe, positive: tuple[Piece, ...], negative: tuple[Piece, ...] | None, clip_skip: int) -> bool:
    """Whether the pipeline's own encoding gives what the job asks (see the module's docstring)."""
    return (clip_skip == 1 and not prompt_syntax.weighted(positive) and not prompt_syntax.weighted(negative or ())
            and len(prompt_syntax.chunks(positive)) == 1 and len(prompt_syntax.chunks(negative or ())) == 1
            and fits(pipe, positive) and fits(pipe, negative))


def encode(pipe, family: str, positive: tuple[Piece, ...], negative: tuple[Piece, ...] | None, guided: bool,
           clip_skip: int = 1) -> dict:
    """The pipeline call's prompt arguments (embeddings) for parsed prompts; ``negative`` None: none given."""
    import torch

    _no_long_prompt_warning(pipe)
    with torch.no_grad():
        if is_plain(pipe, positive, negative, clip_skip):
            return _pipeline_encode(pipe, family, prompt_syntax.plain(positive),
                                    prompt_syntax.plain(negative) if negative else None, guided)
        return _weighted_encode(pipe, family, positive, negative, guided, clip_skip)


def _pipeline_encode(pipe, family: str, prompt: str, negative: str | None, guided: bool) -> dict:
    device = pipe._execution_device
    if family == "sdxl":
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
            negative_prompt=negative)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative_embeds = pipe.encode_prompt(prompt, device, 1, guided, negative_prompt=negative)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


def _providers(pipe, family: str, clip_skip: int) -> list:
    """One compel embeddings provider per text encoder, reading the layer clip skip asks for."""
    from compel.embeddings_provider import EmbeddingsProvider, ReturnedEmbeddingsType, SplitLongTextMode

    device = pipe._execution_device
    if family == "sdxl":  # SDXL reads the penultimate layer, unnormalised
        kind, skip = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED, clip_skip - 1
    elif clip_skip == 1:
        kind, skip = ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED, 0
    else:
        kind, skip = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED, clip_skip - 2
    return [EmbeddingsProvider(tokenizer, SkippedEncoder(encoder, skip), truncate=False, returned_embeddings_type=kind,
                               split_long_text_mode=SplitLongTextMode.PHRASES, device=device)
            for tokenizer, encoder in zip(_tokenizers(pipe), _encoders(pipe))]


LONG_SEQUENCE_WARNING = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' once-only key


def _no_long_prompt_warning(pipe) -> None:
    """A long prompt is tokenized whole (diffusers' embedding lookup, compel) and encoded in chunks, so
    transformers' warning that it "will result in indexing errors" is untrue; it alarmed admins reading the log."""
    for tokenizer in _tokenizers(pipe):
        getattr(tokenizer, "deprecation_warnings", {})[LONG_SEQUENCE_WARNING] = True


def _weighted_encode(pipe, family: str, positive: tuple[Piece, ...], negative: tuple[Piece, ...] | None,
                     guided: bool, clip_skip: int) -> dict:
    import torch

    providers = _providers(pipe, family, clip_skip)
    device = pipe._execution_device
    zero_negative = family == "sdxl" and negative is None and pipe.config.get("force_zeros_for_empty_prompt", False)
    prompts = [positive] + ([negative or ()] if guided else [])
    per_encoder = [[_embed(pipe, provider, pieces) for pieces in prompts] for provider in providers]
    chunks = max(embeds.shape[1] for row in per_encoder for embeds in row)
    per_encoder = [[_pad(provider, embeds, chunks) for embeds in row] for provider, row in zip(providers, per_encoder)]
    joined = [torch.cat([row[index] for row in per_encoder], dim=-1) for index in range(len(prompts))]
    out = {"prompt_embeds": joined[0], "negative_prompt_embeds": None}
    if guided:
        out["negative_prompt_embeds"] = torch.zeros_like(joined[1]) if zero_negative else joined[1]
    if family == "sdxl":
        pooled = [providers[-1].get_pooled_embeddings([_text(pipe, pieces)], device=device) for pieces in prompts]
        out["pooled_prompt_embeds"], out["negative_pooled_prompt_embeds"] = pooled[0], None
        if guided:
            out["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled[1]) if zero_negative else pooled[1]
    dtype = _encoders(pipe)[-1].dtype
    return {key: None if value is None else value.to(device, dtype) for key, value in out.items()}


def _embed(pipe, provider, pieces: tuple[Piece, ...]):
    """The prompt's embeddings, each part between ``BREAK``s starting a chunk of its own."""
    import torch

    parts = []
    for part in prompt_syntax.chunks(pieces):
        part = part or (("", 1.0),)  # the empty prompt (compel cannot tokenize an empty batch)
        texts = [pipe.maybe_convert_prompt(text, provider.tokenizer) for text, _ in part]  # multi-vector embeddings
        weights = [weight for _, weight in part]
        parts.append(provider.get_embeddings_for_weighted_prompt_fragments([texts], [weights], device=provider.device))
    return torch.cat(parts, dim=1)


def _pad(provider, embeds, length: int):
    """Embeddings made as long as ``length`` tokens with chunks of the empty prompt (what compel pads with)."""
    import torch

    empty = provider.empty_z.to(embeds.device, embeds.dtype)
    while embeds.shape[1] < length:
        embeds = torch.cat([embeds, empty], dim=1)
    return embeds


def _text(pipe, pieces: tuple[Piece, ...]) -> str:
    """The text SDXL's pooled embedding is made of: the prompt up to its first ``BREAK``."""
    return pipe.maybe_convert_prompt(prompt_syntax.plain(prompt_syntax.chunks(pieces)[0]), pipe.tokenizer)


def _tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def _encoders(pipe) -> list:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
