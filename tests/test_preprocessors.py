"""Weighted preprocessors: annotator checkpoints under their lllyasviel/Annotators names."""

import dataclasses
import pickle
import shutil
import time

import numpy as np
import pytest

from backend.engine.engine import Engine
from backend.engine.models import ModelError, ModelRegistry, pick_device
from backend.engine.preprocessors import ANNOTATORS, Preprocessors
from backend.server import ServerThread
from conftest import decode, picture, png, rect_mask
from shared.client import Client, EaselError, JobCancelled, Started


@pytest.fixture(scope="module")
def preprocessors(demo_config):
    return Preprocessors(demo_config.annotators, device="cpu")  # as the engine builds them


@pytest.mark.parametrize("name", sorted(ANNOTATORS))
def test_every_weighted_preprocessor_runs_on_its_demo_checkpoint(preprocessors, name):
    image = picture(96, 72)
    control_map = preprocessors.run(name, image, resolution=64)
    assert control_map.size == image.size and control_map.mode == "RGB"


def test_weighted_preprocess_through_the_server(client):
    image = picture(120, 80)
    depth = decode(client.preprocess("depth", png(image), resolution=64))
    assert depth.shape == (80, 120, 4) and (depth[..., 3] == 255).all()
    assert depth[..., :3].std() > 1, "a depth map varies across the picture"
    welcome = client.welcome["capabilities"]
    assert set(ANNOTATORS) <= set(welcome["preprocessors"])
    assert welcome["reference_families"] == ["sd15", "sdxl"]


def test_control_unit_runs_its_weighted_preprocessor(client):
    image = picture(256, 256)

    def run(control):
        return decode(client.run("inpaint", image=png(image), mask=png(rect_mask(image.size, (60, 60, 200, 200))),
                                 prompt="a house", steps=4, seed=5, control=control).images[0].image)
    plain = run([])
    steered = run([{"type": "depth", "preprocess": "on", "resolution": 64}])
    assert np.abs(steered.astype(int) - plain).mean() > 0.5
    outside = steered[..., 3] == 0
    assert (steered[outside][:, :3] == np.asarray(image)[outside]).all()


def test_missing_annotator_names_the_file_and_the_server_keeps_serving(demo_config, tmp_path):
    shutil.copy(f"{demo_config.annotators}/table5_pidinet.pth", tmp_path)  # softedge_pidinet only
    config = dataclasses.replace(demo_config, annotators=str(tmp_path))
    engine = Engine(ModelRegistry(config, *pick_device("cpu")))
    with ServerThread(config, engine) as server, Client(server.url) as other:
        assert "softedge_pidinet" in other.welcome["capabilities"]["preprocessors"]
        assert "depth_midas" not in other.welcome["capabilities"]["preprocessors"]
        events = []
        with pytest.raises(EaselError) as caught:
            other.preprocess("depth", png(picture(64, 64)), on_event=events.append)
        assert caught.value.code == "missing_annotator" and caught.value.field == "preprocessor"
        assert "dpt_hybrid-midas-501f0c75.pt" in caught.value.message and str(tmp_path) in caught.value.message
        assert not [event for event in events if type(event).__name__ == "Started"], "fails before `started`"
        with pytest.raises(EaselError) as caught:
            other.run("img2img", image=png(picture(64, 64)), prompt="x", steps=2, strength=0.5,
                      control=[{"type": "canny"}, {"type": "pose", "preprocess": "on"}])
        assert caught.value.code == "missing_annotator" and caught.value.field == "control[1].preprocess"
        # Jobs run in stages (a strong img2img of a picture over the native area, a large generate, an
        # upscale's refine, a large selection remade) loaded the annotator inside a stage: they failed after
        # `started`.
        pose = [{"type": "pose", "preprocess": "on", "image": png(picture(64, 64))}]
        for mode, params in (("img2img", {"image": png(picture(640, 640)), "strength": 0.9}),
                             ("generate", {"width": 1024, "height": 768}),
                             ("upscale", {"image": png(picture(64, 64)), "refine": 0.5}),
                             ("inpaint", {"image": png(picture(900, 900)), "strength": 1.0,  # a large selection
                                          "mask": png(rect_mask((900, 900), (50, 50, 850, 850)))})):
            events = []
            with pytest.raises(EaselError) as caught:
                other.run(mode, prompt="x", steps=2, control=pose, on_event=events.append, **params)
            assert (caught.value.code, caught.value.field) == ("missing_annotator", "control[0].preprocess"), mode
            assert not [event for event in events if type(event).__name__ == "Started"], f"{mode}: before `started`"
        assert decode(other.preprocess("softedge_pidinet", png(picture(64, 64)))).shape == (64, 64, 4)


def test_no_annotators_configured_says_how_to_configure(tmp_path):
    with pytest.raises(ModelError) as caught:
        Preprocessors(None).run("openpose", picture(64, 64))
    assert caught.value.code == "missing_annotator"
    assert "body_pose_model.pth" in caught.value.message and "annotators" in caught.value.message
    typo = Preprocessors(str(tmp_path / "Annotatorz"))  # a missing folder is not a hub repository
    assert typo.available() == ["canny", "lineart_standard", "shuffle"]
    with pytest.raises(ModelError) as caught:
        typo.run("openpose", picture(64, 64))
    assert "Annotatorz" in caught.value.message and "hub" not in caught.value.message


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EASEL_PWNED'], 'w').write('ran')",))


def test_an_annotator_carrying_code_is_refused_not_run(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("EASEL_PWNED", str(flag))
    with open(tmp_path / "mlsd_large_512_fp32.pth", "wb") as file:
        pickle.dump(_Payload(), file)
    with pytest.raises(ModelError) as caught:
        Preprocessors(str(tmp_path)).run("mlsd", picture(64, 64))
    assert caught.value.code == "model_load_failed" and "mlsd" in caught.value.message
    assert not flag.exists()


def test_presets_of_one_network_share_it(preprocessors):
    assert preprocessors.load("softedge_hed") is preprocessors.load("scribble_hed")
    assert preprocessors.load("softedge_hed") is not preprocessors.load("softedge_pidinet")


def test_a_thin_picture_is_preprocessed_not_a_crash(client):
    # controlnet_aux rounds the working size to a multiple of 64: a shorter side under 33 became 0 and
    # OpenCV failed (`internal`), for a 16x16 preprocess or a 256x16 generate's unit alike
    for width, height in ((16, 16), (300, 32)):
        image = picture(256, 256).resize((width, height))
        control_map = decode(client.preprocess("canny", png(image)))
        assert control_map.shape == (height, width, 4)
    result = client.run("generate", prompt="x", steps=2, seed=1, width=256, height=16,
                        control=[{"type": "canny", "preprocess": "on", "image": png(picture(256, 64))}])
    assert decode(result.images[0].image).shape == (16, 256, 4)


def test_a_running_preprocess_stops_when_cancelled_not_when_its_annotator_is_done(client):
    # normal_bae at a working size of 1024 runs 15-40 s on these CPUs; a cancel used to wait for all of it
    # (and, inside a submit, for every unit's map), holding the queue.
    unit = {"type": "normal", "preprocess": "normal_bae", "resolution": 1024, "image": png(picture(64, 64))}
    calls = {"preprocess": lambda **kw: client.preprocess("normal_bae", png(picture(64, 64)), resolution=1024, **kw),
             "generate": lambda **kw: client.run("generate", prompt="x", steps=2, seed=0, width=64, height=64,
                                                 control=[unit], **kw),
             "img2img": lambda **kw: client.run("img2img", prompt="x", steps=2, seed=0, image=png(picture(64, 64)),
                                                control=[unit], **kw)}
    started = []

    def cancel_once_started(event):
        if isinstance(event, Started):  # the annotator runs next
            started.append(time.monotonic())
            client.cancel(event.job)

    for what, call in calls.items():
        with pytest.raises(JobCancelled):
            call(on_event=cancel_once_started)
        assert time.monotonic() - started[-1] < 6, f"{what}: the annotator stopped at its next layer"


class _CancelledAfter:
    """A reporter whose job is cancelled once ``checks`` cancel checks have passed after `started`."""

    def __init__(self, checks: int):
        self.checks, self.began = checks, False

    def started(self, steps, passes):
        self.began = True

    def progress(self, *args):
        pass

    def is_cancelled(self):
        if not self.began:
            return False
        self.checks -= 1
        return self.checks < 0


@pytest.mark.parametrize("name", sorted(ANNOTATORS))
def test_a_cancel_stops_every_annotator_even_one_that_swallows_errors(preprocessors, name):
    # MLSD's detector wraps its network in `except Exception: pass`: the cancel raised at its next layer was
    # swallowed and a black map came back as if it had finished
    class Stop(Exception):
        pass

    def cancelled():
        raise Stop()

    with pytest.raises(Stop):
        preprocessors.run(name, picture(96, 64), 64, check=cancelled)


def test_a_cancelled_mlsd_preprocess_is_cancelled_and_leaves_no_black_map_for_the_next_job(engine):
    from backend.engine.engine import JobCancelled as EngineCancelled
    from backend.engine.job import Control, EditJob, PreprocessJob

    image = np.asarray(picture(64, 64).convert("RGBA"))
    with pytest.raises(EngineCancelled):  # it was a `result` (a black map) for a job the client had cancelled
        engine.run(PreprocessJob("mlsd", image, 64), _CancelledAfter(0))
    unit = Control("mlsd", image, "mlsd", 1.0, 0.0, 1.0, 64)
    job = EditJob(mode="generate", model="demo", prompt="x", negative_prompt="", seed=3, steps=2, guidance=5.0,
                  strength=1.0, batch=1, sampler="euler", width=64, height=64, control=(unit,))
    engine.control_maps.clear()
    with pytest.raises(EngineCancelled):
        engine.run(job, _CancelledAfter(1))  # passes the check before the pass, then stops inside MLSD
    assert len(engine.control_maps) == 0, "no map was kept of the cancelled run"
    after_cancel = engine.run(job, _CancelledAfter(10**6)).layers[0].pixels
    engine.control_maps.clear()
    fresh = engine.run(job, _CancelledAfter(10**6)).layers[0].pixels
    np.testing.assert_array_equal(after_cancel, fresh)
