"""Prompts: A1111 emphasis, long prompts, textual-inversion embeddings, clip skip, v-prediction.

The pure parts (the emphasis parser, embedding names) are tested as functions; the rest through the
real diffusers pipelines of the demo models (a character-level tokenizer: one token per character)
and a real server on loopback.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.config import Config, ConfigError, ModelSpec, load_config
from backend.engine import prediction, prompts
from backend.engine.embeddings import explicit_names, read_vectors, substitute
from backend.engine.engine import Engine, JobCancelled, make_scheduler
from backend.engine.job import EditJob
from backend.engine.models import ModelError, ModelRegistry, pick_device
from backend.engine.runner import PassInputs, run_pass
from conftest import decode, picture, png
from shared.client import Accepted, EaselError
from shared.errors import ProtocolError
from shared.job import Job
from shared.prompt_syntax import chunks, parse, plain, read

# -- the emphasis parser ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt, pieces", [
    ("a red door", (("a red door", 1.0),)),
    ("a (red) door", (("a ", 1.0), ("red", 1.1), (" door", 1.0))),
    ("((red))", (("red", 1.21),)),
    ("[blue] sky", (("blue", 0.909091), (" sky", 1.0))),
    ("(word:1.5)", (("word", 1.5),)),
    ("(a (b:1.2)) c", (("a ", 1.1), ("b", 1.32), (" c", 1.0))),
    ("((a):0.5)", (("a", 0.55),)),
    (r"\(not weighted\) \[x\]", (("(not weighted) [x]", 1.0),)),
    ("(style: baroque)", (("style: baroque", 1.1),)),  # a colon followed by words is text
    ("(red:1.0) door", (("red door", 1.0),)),
    ("[a:b] c", (("a:b", 0.909091), (" c", 1.0))),  # no step: emphasis, as before
    (r"\[cat:dog:0.5\]", (("[cat:dog:0.5]", 1.0),)),
    ("", ()),
])
def test_a1111_emphasis_reads_as_weighted_pieces(prompt, pieces):
    assert parse(prompt) == pieces


@pytest.mark.parametrize("prompt, says", [
    ("a (red door", "'(' at character 3 is never closed"),
    ("a red) door", "')' at character 6 closes nothing"),
    ("(a]", "']' at character 3 does not close the '(' at character 1"),
    ("(a:1.2.3)", "the weight '1.2.3'"),
    ("(a:)", "the weight ''"),
    ("(a:-1)", "between 0 and 10"),
    ("(a:11)", "between 0 and 10"),
    ("[cat:dog:-1]", "the step -1 of the prompt edit at character 1 must be 0 or more"),
    ("a [cat:dog:1..5]", "the step '1..5' of the prompt edit at character 3 is not a number"),
    ("[cat:dog:0.5", "'[' at character 1 is never closed"),
    # A minute of a core for the 10,000 characters a prompt may hold, every group closing reweighing all inside it
    ("(" * 3333 + "a)" * 3333, "'(' at character 33 opens a group 33 deep"),
])
def test_malformed_emphasis_is_refused_naming_the_field_and_the_place(prompt, says):
    with pytest.raises(ProtocolError) as caught:
        Job.create("generate", negative_prompt=prompt).check()
    assert caught.value.field == "negative_prompt" and says in caught.value.message, caught.value.message


def test_groups_may_nest_as_deep_as_the_limit():
    ((text, weight),) = parse("(" * 32 + "a" + ")" * 32)
    assert text == "a" and weight == pytest.approx(1.1 ** 32, rel=1e-5)


@pytest.mark.parametrize("prompt, steps, texts", [
    ("a [cat:dog:0.5]", 4, ["a cat", "a cat", "a dog", "a dog"]),  # a share of the steps: a decimal point
    ("a [cat:dog:1]", 3, ["a cat", "a dog", "a dog"]),  # a step number
    ("[cat::2] and", 3, ["cat and", "cat and", " and"]),  # dropped after step 2
    ("a [dog:0.5]", 4, ["a ", "a ", "a dog", "a dog"]),  # added after half
    ("[cat:dog:1.0]", 3, ["cat", "cat", "cat"]),  # the whole way: never
    ("[cat:dog:0]", 2, ["dog", "dog"]),
    ("[cat:dog:" + "9" * 400 + ".5]", 2, ["cat", "cat"]),  # (a float of infinity)
    ("[red|green|blue]", 4, ["red", "green", "blue", "red"]),
    ("[[red|green]:blue:0.5]", 4, ["red", "green", "blue", "blue"]),
])
def test_prompt_editing_and_alternation_change_the_text_by_step(prompt, steps, texts):
    parsed = read(prompt)
    assert parsed.changes
    assert [plain(parsed.pieces(step, steps)) for step in range(1, steps + 1)] == texts


def test_edits_take_the_weights_of_their_groups():
    parsed = read("a ([cat:(dog:1.5):0.5]:1.2)")
    assert parsed.pieces(1, 2) == (("a ", 1.0), ("cat", 1.2))
    assert parsed.pieces(2, 2) == (("a ", 1.0), ("dog", 1.8))
    assert not read("a (red:1.2) [door] BREAK sky").changes


def test_break_starts_a_chunk_wherever_it_stands():
    assert chunks(parse("a, BREAK (b BREAK c:1.2) BREAKfast BREAK")) == [
        (("a,", 1.0),), (("b", 1.2),), (("c", 1.2), (" BREAKfast", 1.0))]
    assert chunks(parse("no break here, Break")) == [(("no break here, Break", 1.0),)]


def test_instruct_refuses_a_prompt_that_changes():
    with pytest.raises(ProtocolError) as caught:
        Job.create("instruct", prompt="make it [winter|autumn]", image={"data": "x"}).check()
    assert caught.value.field == "prompt" and "alternation" in caught.value.message


def test_embedding_names_become_tokens_as_words_only():
    pieces = (("a demo-style and embedding:demo-embedding.pt, not demo-styles or xdemo-style", 1.2),)
    tokens = {"demo-style": "<t1>", "demo-embedding": "<t2>"}
    assert substitute(pieces, tokens) == (("a <t1> and <t2>, not demo-styles or xdemo-style", 1.2),)
    assert explicit_names("embedding:a, (embedding:b.safetensors:1.2) c") == ["a", "b"]


# -- encoding through the demo pipelines ------------------------------------------------------


class Quiet:
    def started(self, steps, passes): pass

    def progress(self, step, total, preview): pass

    def is_cancelled(self): return False


def generate(engine: Engine, prompt: str, model: str = "demo-base", **params) -> np.ndarray:
    params = {"negative_prompt": "", "seed": 3, "steps": 2, "guidance": 7.0, "sampler": "euler", **params}
    job = EditJob(mode="generate", model=model, prompt=prompt, strength=1.0, batch=1, width=64, height=64, **params)
    return engine.run(job, Quiet()).layers[0].pixels


# ~150 tokens (the demo tokenizer reads one token per character), the same up to token 120
LONG = "a lighthouse on a cliff at dusk, waves below, gulls in the wind, " * 2
LONG_A, LONG_B = LONG[:120] + "red roof and a small boat", LONG[:120] + "blue roof and a big ship"


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_plain_short_prompts_encode_exactly_as_the_pipeline_does(engine, model):
    """No emphasis, within 77 tokens: the numbers the pipeline makes from the words themselves."""
    loaded = engine.registry.get(model)
    pipe = loaded.pipeline("generate")

    def run(prompt_args):
        pipe.scheduler = make_scheduler("euler", loaded.scheduler_config)
        inputs = PassInputs("generate", (64, 64), 2, 7.0, 1.0, 5, prompt_args)
        return run_pass(pipe, inputs, lambda *a: {})

    for prompt, negative in (("a red door", "blurry"), ("a red door", None)):
        words = run({"prompt": prompt, "negative_prompt": negative})
        encoded = prompts.encode(pipe, loaded.family, parse(prompt), parse(negative) if negative else None, True)
        np.testing.assert_array_equal(words, run(encoded))


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_the_weighted_path_agrees_with_the_pipeline_on_plain_prompts(engine, model):
    """compel's provider, set up per family here, makes the pipeline's own numbers when nothing is weighted
    (prompt, negative, SDXL's pooled and zeroed negatives) and SDXL clip skip 2 is diffusers' clip_skip=1."""
    loaded = engine.registry.get(model)
    pipe = loaded.base
    for negative in (None, "blurry"):
        own = prompts._pipeline_encode(pipe, loaded.family, "a red door", negative, True)
        with torch.no_grad():
            weighted = prompts._weighted_encode(pipe, loaded.family, parse("a red door"),
                                                parse(negative) if negative else None, True, 1)
        for key, value in own.items():
            torch.testing.assert_close(weighted[key], value, rtol=0, atol=0)
    if loaded.family == "sdxl":
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt("a red door", device=pipe.device,
                                                      do_classifier_free_guidance=False, clip_skip=1)
            skipped = prompts._weighted_encode(pipe, "sdxl", parse("a red door"), None, False, 2)
        torch.testing.assert_close(skipped["prompt_embeds"], embeds, rtol=0, atol=0)
        torch.testing.assert_close(skipped["pooled_prompt_embeds"], pooled, rtol=0, atol=0)


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_weighting_and_long_prompts_change_the_picture_and_repeat_exactly(engine, model):
    plain = generate(engine, "a red door", model)
    weighted = generate(engine, "a (red:1.5) door", model)
    assert (plain != weighted).any()
    engine.prompts._entries.clear()  # encoded afresh: the same numbers
    np.testing.assert_array_equal(weighted, generate(engine, "a (red:1.5) door", model))
    assert (generate(engine, "a red door", model, negative_prompt="(blurry:1.3)") != plain).any()
    assert len(LONG_A) > 140 and LONG_A[:120] == LONG_B[:120]
    assert (generate(engine, LONG_A, model) != generate(engine, LONG_B, model)).any()


def test_a_long_prompt_leaves_no_indexing_errors_warning_in_the_log(engine, capfd, caplog):
    # "Token indices sequence length is longer than ... will result in indexing errors" on a prompt that works
    for prompt in (LONG_A, f"({LONG_B}:1.2)"):  # the pipeline's own encoding, and compel's
        for tokenizer in prompts._tokenizers(engine.registry.get("demo-base").base):
            tokenizer.deprecation_warnings.clear()  # as on a freshly started server
        engine.prompts._entries.clear()
        capfd.readouterr()
        generate(engine, prompt + ", a long prompt for a fresh tokenizer", "demo-base")
        assert "indexing errors" not in capfd.readouterr().err + caplog.text, prompt


def test_the_cache_keys_on_the_parsed_prompt(engine):
    engine.prompts._entries.clear()
    generate(engine, "a (red:1.2) door")
    generate(engine, "a (red:1.2) door", seed=9)
    generate(engine, "a (red:1.20) door")  # the same pieces
    assert len(engine.prompts) == 1
    generate(engine, "a (red:1.3) door")
    assert len(engine.prompts) == 2


@pytest.fixture(scope="module")
def own_engine(demo_config):
    """An engine of this module's own: embeddings load into its text encoders."""
    return Engine(ModelRegistry(demo_config, *pick_device("cpu")))


@pytest.mark.parametrize("model, name", [("demo-base", "demo-embedding"), ("demo-base", "demo-style"),
                                         ("demo-xl", "demo-embedding-xl")])
def test_a_named_embedding_changes_the_picture_and_leaves_other_prompts_alone(own_engine, model, name):
    engine = own_engine
    before = generate(engine, "a red door", model)
    with_embedding = generate(engine, f"a red door, {name}", model)
    assert (with_embedding != generate(engine, "a red door, ", model)).any()
    np.testing.assert_array_equal(with_embedding, generate(engine, f"a red door, embedding:{name}", model))
    engine.prompts._entries.clear()
    np.testing.assert_array_equal(before, generate(engine, "a red door", model))


def test_a_weighted_multi_vector_embedding_goes_through_compel(engine):
    named = generate(engine, "a red door, demo-embedding")
    weighted = generate(engine, "a red door, (demo-embedding:1.4)")
    assert (weighted != named).any()
    np.testing.assert_array_equal(weighted, generate(engine, "a red door, (embedding:demo-embedding:1.4)"))


def test_embedding_files_read_weights_only(demo_root, tmp_path):
    vectors = read_vectors(str(demo_root / "embeddings" / "demo-style.pt"))["vectors"]
    assert vectors.shape == (1, 32)
    assert set(read_vectors(str(demo_root / "embeddings" / "demo-embedding-xl.safetensors"))) == {"clip_l", "clip_g"}

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        read_vectors(str(tmp_path / "evil.pt"))


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_clip_skip_2_differs_from_1_and_too_deep_a_skip_is_refused(engine, model):
    default = generate(engine, "a red door", model)
    np.testing.assert_array_equal(default, generate(engine, "a red door", model, clip_skip=1))
    assert (generate(engine, "a red door", model, clip_skip=2) != default).any()
    with pytest.raises(ModelError) as caught:
        generate(engine, "a red door", model, clip_skip=5)  # the demo text encoders have 4 layers
    assert caught.value.field == "clip_skip"


def test_clip_skip_reads_the_layer_a1111_names(engine):
    """SD1.5 clip skip 2: the penultimate layer's hidden states through the final layer norm."""
    pipe = engine.registry.get("demo-base").base
    out = prompts.encode(pipe, "sd15", parse("a red door"), None, False, clip_skip=2)["prompt_embeds"]
    ids = pipe.tokenizer("a red door", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(states[-2])
    torch.testing.assert_close(out, expected)


# -- v-prediction ---------------------------------------------------------------------------------


def test_the_v_prediction_model_samples_with_v_prediction(engine):
    pixels = generate(engine, "a red door", "demo-vpred")
    model = engine.registry.get("demo-vpred")
    scheduler = model.pipeline("generate").scheduler.config
    assert (scheduler.prediction_type, scheduler.rescale_betas_zero_snr, scheduler.timestep_spacing) == \
        ("v_prediction", True, "trailing")
    assert model.prediction.guidance_rescale == prediction.ZTSNR_GUIDANCE_RESCALE
    assert (pixels != generate(engine, "a red door", "demo-base")).any()
    assert engine.registry.get("demo-base").pipeline("generate").scheduler.config.prediction_type == "epsilon"


def test_a_v_pred_key_in_a_single_file_says_v_prediction(tmp_path):
    markers = {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0), "w": torch.ones(1)}  # as NoobAI ships them
    save_file(markers, str(tmp_path / "noob.safetensors"))
    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    assert prediction.from_checkpoint(str(tmp_path / "noob.safetensors")) == \
        {"prediction_type": "v_prediction", "zero_terminal_snr": True}
    assert prediction.from_checkpoint(str(tmp_path / "plain.safetensors")) == {}


def test_a_v_pred_single_file_loads_with_v_prediction(demo_root, tmp_path):
    from safetensors.torch import load_file

    from ldm_checkpoint import write_ldm_checkpoint

    checkpoint = write_ldm_checkpoint(demo_root / "sd15", tmp_path / "noob-vpred.safetensors")
    save_file(load_file(str(checkpoint)) | {"v_pred": torch.zeros(0)}, str(checkpoint))
    config = Config(models={"vpred": ModelSpec("vpred", str(checkpoint), config=str(demo_root / "sd15"))})
    registry = ModelRegistry(config, *pick_device("cpu"))
    assert registry.describe()[0].prediction_type == "v_prediction"  # from the header, before loading
    engine = Engine(registry)
    generate(engine, "a red door", "vpred")
    scheduler = registry.get("vpred").pipeline("generate").scheduler.config
    assert scheduler.prediction_type == "v_prediction" and not scheduler.rescale_betas_zero_snr


def test_a_models_config_sets_clip_skip_and_prediction(demo_root, engine, tmp_path):
    (tmp_path / "easel.toml").write_text(
        f'[server]\nembedding_folders = ["{demo_root / "embeddings"}"]\n\n'
        f'[models.skip2]\nsource = "{demo_root / "sd15"}"\nclip_skip = 2\n'
        'prediction_type = "v_prediction"\nzero_terminal_snr = true\nguidance_rescale = 0.3\n')
    config = load_config(tmp_path / "easel.toml").check()
    configured = Engine(ModelRegistry(config, *pick_device("cpu")))
    model = configured.registry.get("skip2")
    assert (model.clip_skip, model.prediction) == (2, prediction.Prediction("v_prediction", True, 0.3))
    assert configured.embeddings.names("sd15") == ["demo-embedding", "demo-style"]
    model.prediction = prediction.Prediction()  # (only the clip skip differs from demo-base now)
    model.scheduler_config = dict(engine.registry.get("demo-base").scheduler_config)
    np.testing.assert_array_equal(generate(configured, "a red door", "skip2"),
                                  generate(engine, "a red door", clip_skip=2))


@pytest.mark.parametrize("line, says", [
    ("clip_skip = 0", "models.m.clip_skip must be a whole number from 1 to 12"),
    ("prediction_type = \"v\"", "models.m.prediction_type must be epsilon or v_prediction"),
    ("zero_terminal_snr = 1", "models.m.zero_terminal_snr must be true or false"),
    ("guidance_rescale = 2", "models.m.guidance_rescale must be a number from 0 to 1"),
])
def test_bad_prompt_settings_in_the_config_name_the_key(tmp_path, line, says):
    (tmp_path / "easel.toml").write_text(f'[models.m]\nsource = "/x"\n{line}\n')
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(tmp_path / "easel.toml").check()


def unet_sees(pipe, inputs: PassInputs) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The prompt embeddings (and SDXL's pooled one) the UNet was given at each step, of the prompt's half."""
    seen = []

    def look(module, args, kwargs):
        pooled = (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
        seen.append((kwargs["encoder_hidden_states"][-1], None if pooled is None else pooled[-1]))

    handle = pipe.unet.register_forward_pre_hook(look, with_kwargs=True)
    try:
        run_pass(pipe, inputs, lambda *a: {})
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
@pytest.mark.parametrize("mode, steps, strength, prompt, expected", [
    ("generate", 4, 1.0, "a [red:blue:3] door", "rrrb"),
    ("generate", 4, 1.0, "a [red|blue] door", "rbrb"),
    ("img2img", 8, 0.5, "a [red:blue:0.5] door", "rrbb"),  # half of the 4 steps that run
    ("inpaint", 3, 1.0, "a [red:blue:0.5] (door:1.1)", "rbb"),  # soft inpainting steers the same callback
])
def test_the_unet_gets_each_steps_prompt(engine, model, mode, steps, strength, prompt, expected):
    loaded = engine.registry.get(model)
    pipe = loaded.pipeline(mode)
    pipe.scheduler = make_scheduler("euler", loaded.scheduler_config)
    job = EditJob(mode=mode, model=model, prompt=prompt, negative_prompt="blurry", strength=strength, batch=1,
                  steps=steps, guidance=7.0, seed=3, sampler="euler")
    prompt_at = engine._prompt(job, loaded, pipe)
    wanted = {colour[0]: prompts.encode(pipe, loaded.family, parse(re.sub(r"\[[^]]*\]", colour, prompt)),
                                        parse("blurry"), True) for colour in ("red", "blue")}
    inputs = PassInputs(mode, (64, 64), steps, 7.0, strength, 5, prompt_at,
                        image=picture(64, 64) if mode != "generate" else None,
                        mask=Image.new("L", (64, 64), 255) if mode == "inpaint" else None,
                        change=np.ones((64, 64), np.float32) if mode == "inpaint" else None)
    seen = unet_sees(pipe, inputs)
    assert len(seen) == len(expected)
    for (embeds, pooled), key in zip(seen, expected):
        torch.testing.assert_close(embeds, wanted[key]["prompt_embeds"][0], rtol=0, atol=0)
        if model == "demo-xl":
            torch.testing.assert_close(pooled, wanted[key]["pooled_prompt_embeds"][0], rtol=0, atol=0)


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_an_edit_at_either_end_is_the_plain_prompt_exactly(engine, model):
    red, blue = (generate(engine, f"a {colour} door", model, steps=4) for colour in ("red", "blue"))
    assert (red != blue).any()
    np.testing.assert_array_equal(generate(engine, "a [red:blue:4] door", model, steps=4), red)  # never switches
    np.testing.assert_array_equal(generate(engine, "a [red:blue:0] door", model, steps=4), blue)  # from step 1
    late = generate(engine, "a [red:blue:0.75] door", model, steps=4)  # the last step alone
    assert (late != red).any() and (late != blue).any()


def test_a_job_cancelled_while_its_step_prompts_encode_stops_there(engine):
    # a prompt of many weighted words encodes for seconds, once for each text its steps read
    engine.prompts._entries.clear()

    class CancelledAfterOne(Quiet):
        began = False

        def started(self, steps, passes):
            self.began = True

        def is_cancelled(self):
            return len(engine.prompts) > 0

    reporter = CancelledAfterOne()
    job = EditJob(mode="generate", model="demo-base", prompt="a [red|blue|green] door", negative_prompt="",
                  strength=1.0, batch=1, width=64, height=64, seed=3, steps=6, guidance=7.0, sampler="euler")
    with pytest.raises(JobCancelled):
        engine.run(job, reporter)
    assert len(engine.prompts) == 1 and not reporter.began


@pytest.mark.parametrize("model", ["demo-base", "demo-xl"])
def test_break_encodes_each_part_as_a_chunk_of_its_own(engine, model):
    loaded = engine.registry.get(model)
    pipe = loaded.base
    with torch.no_grad():
        both = prompts.encode(pipe, loaded.family, parse("a red door BREAK a blue sky"), parse("blurry"), True)
        alone = [prompts._weighted_encode(pipe, loaded.family, parse(text), None, True, 1)
                 for text in ("a red door", "a blue sky")]
    assert both["prompt_embeds"].shape[1] == both["negative_prompt_embeds"].shape[1] == 154
    torch.testing.assert_close(both["prompt_embeds"][:, :77], alone[0]["prompt_embeds"], rtol=0, atol=0)
    torch.testing.assert_close(both["prompt_embeds"][:, 77:], alone[1]["prompt_embeds"], rtol=0, atol=0)
    if loaded.family == "sdxl":  # pooled: the first part's
        torch.testing.assert_close(both["pooled_prompt_embeds"], alone[0]["pooled_prompt_embeds"], rtol=0, atol=0)


# -- over the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, code, field", [
    ({"prompt": "a (red door"}, "invalid_field", "prompt"),
    ({"negative_prompt": "(blurry:1..5)"}, "invalid_field", "negative_prompt"),
    ({"prompt": "a [red:blue:-0.5] door"}, "invalid_field", "prompt"),
    ({"prompt": "a door, embedding:nothing-here"}, "unknown_embedding", "prompt"),
    ({"prompt": "embedding:demo-embedding-xl"}, "unknown_embedding", "prompt"),  # an SDXL one on SD1.5
    ({"clip_skip": 13}, "invalid_field", "clip_skip"),
    ({"clip_skip": 0}, "invalid_field", "clip_skip"),
])
def test_bad_prompts_and_clip_skips_are_refused_before_accepted(client, change, code, field):
    job = client.submit("generate", **{"prompt": "x", "steps": 2, "width": 64, "height": 64, **change})
    with pytest.raises(EaselError) as caught:
        for event in client.events(job):
            assert not isinstance(event, Accepted), "refused only after it was accepted"
    assert (caught.value.code, caught.value.field) == (code, field), caught.value


def test_models_and_welcome_list_embeddings_and_prediction(client):
    listing = client.models()
    by_name = {model["name"]: model for model in listing["models"]}
    assert by_name["demo-vpred"]["prediction_type"] == "v_prediction" and by_name["demo-vpred"]["zero_terminal_snr"]
    assert by_name["demo"]["prediction_type"] == "epsilon"
    families = {item["name"]: item["family"] for item in listing["embeddings"]}
    assert families == {"demo-embedding": "sd15", "demo-style": "sd15", "demo-embedding-xl": "sdxl"}
    assert {item["name"] for item in client.welcome["capabilities"]["embeddings"]} == set(families)


def test_a_weighted_job_over_the_wire_reports_its_clip_skip(client):
    result = client.run("generate", prompt="a (red:1.3) door, demo-style", clip_skip=2, steps=2, width=64,
                        height=64, seed=1)
    assert result.parameters["clip_skip"] == 2
    assert decode(result.images[0].image).shape == (64, 64, 4)


def test_a_prompt_that_changes_runs_over_the_wire_and_comes_back_as_written(client):
    prompt, negative = "a [red|blue] door BREAK [demo-style:0.5]", "[blurry::2]"
    result = client.run("img2img", prompt=prompt, negative_prompt=negative, image=png(picture(64, 64)), steps=4,
                        strength=0.75, seed=1)
    assert (result.parameters["prompt"], result.parameters["negative_prompt"]) == (prompt, negative)
    assert decode(result.images[0].image).shape == (64, 64, 4)


def test_an_embeddings_folder_linked_into_the_embeddings_folder_is_read(demo_root, tmp_path):
    """A1111 users link a folder of embeddings on another disk into embeddings/, as they do models."""
    from backend.engine.embeddings import Embeddings

    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "shared").symlink_to(demo_root / "embeddings")
    names = {entry["name"] for entry in Embeddings([str(folder)]).listing()}
    assert {"demo-embedding", "demo-embedding-xl"} <= names
