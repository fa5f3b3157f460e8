"""Parking the idle UNet: a model with a dedicated inpaint UNet keeps only the job's UNet on the GPU.

No GPU here, so the CPU stands in for it: a module on the "device" works on its own copy of the
weights, a parked one on its host copy. That checks the bookkeeping (which copy each tensor uses, its
strides, that host copies are made once), and real jobs run with parking forced on, where it must
change no pixel while jobs switch between the two UNets in any order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.config import ConfigError, load_config
from backend.engine.engine import Engine
from backend.engine.job import Control, EditJob, Reference
from backend.engine.models import ModelRegistry, pick_device
from backend.engine.residency import Residency
from backend.performance import Performance
from conftest import picture


def small_net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 4, 1))
    net.register_buffer("scale", torch.arange(4.0))
    return net


def test_only_the_active_module_stays_on_the_device():
    base, inpaint = small_net(), small_net().to(memory_format=torch.channels_last)
    expected = {name: t.clone() for name, t in inpaint.state_dict().items()}
    residency = Residency(torch.device("cpu"))
    residency.park(inpaint)  # freshly loaded: parked where it is
    assert residency.is_parked(inpaint) and not residency.is_parked(base)
    params = list(inpaint.parameters())

    residency.keep_only(inpaint, (base, inpaint))
    assert not residency.is_parked(inpaint) and residency.is_parked(base)
    assert list(inpaint.parameters()) == params  # same Parameter objects: pipelines and adapters still see them
    assert inpaint[0].weight.is_contiguous(memory_format=torch.channels_last)

    residency.keep_only(base, (base, inpaint))
    assert not residency.is_parked(base) and residency.is_parked(inpaint)
    for name, tensor in inpaint.state_dict().items():
        assert torch.equal(tensor, expected[name]), name  # the host copy holds the loaded weights
    host = {id(t): t.data_ptr() for t in inpaint.parameters()}
    residency.keep_only(inpaint, (base, inpaint))
    residency.keep_only(base, (base, inpaint))
    assert {id(t): t.data_ptr() for t in inpaint.parameters()} == host  # parking again copies nothing


def test_setting_is_read_and_resolved(tmp_path):
    path = tmp_path / "easel.toml"
    path.write_text("[performance]\npark_idle_unet = false\n")
    assert load_config(path).performance.park_idle_unet is False
    path.write_text('[performance]\npark_idle_unet = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"performance\.park_idle_unet"):
        load_config(path)
    assert Performance().resolve("cuda").park_idle_unet is True
    assert Performance().resolve("cpu").park_idle_unet is False
    assert Performance(cpu_offload=True).resolve("cuda").park_idle_unet is False  # offload moves everything


class Quiet:
    def started(self, steps, passes): pass

    def progress(self, step, total, preview): pass

    def is_cancelled(self): return False


def job(mode: str, **extra) -> EditJob:
    image = np.dstack([np.asarray(picture(256, 256)), np.full((256, 256), 255, np.uint8)])
    mask = np.zeros((256, 256), np.uint8)
    mask[60:200, 60:200] = 255
    request = EditJob(mode=mode, model="demo", prompt="a house", negative_prompt="", seed=3,
                          steps=4, guidance=5.0, strength=0.8, batch=1, sampler="euler", image=image,
                          mask=mask if mode == "inpaint" else None, **extra)
    return request


def steered(mode: str) -> EditJob:
    edges = np.zeros((256, 256, 4), np.uint8)
    edges[:, 128:] = 255
    return job(mode, control=[Control("canny", edges, None, 1.0, 0.0, 1.0)],
               references=[Reference(np.dstack([np.asarray(picture(96, 96, seed=2)),
                                                np.full((96, 96), 255, np.uint8)]), 1.0, "reference")])


def test_jobs_switching_unets_with_parking_equal_jobs_without(demo_config, engine):
    config = dataclasses.replace(demo_config, performance=Performance(park_idle_unet=True))
    parking = Engine(ModelRegistry(config, *pick_device("cpu")))
    model = parking.registry.get("demo")
    assert parking.speed.residency.is_parked(model.inpaint_unet)  # loaded straight into RAM
    # each job switches UNets; the adapter and ControlNet load into whichever UNet is on the device
    for request in (job("inpaint"), steered("img2img"), steered("inpaint"), job("img2img")):
        pixels = parking.run(request, Quiet()).layers[0].pixels
        active, idle = (model.inpaint_unet, model.base.unet)[::1 if request.mode == "inpaint" else -1]
        assert not parking.speed.residency.is_parked(active) and parking.speed.residency.is_parked(idle)
        np.testing.assert_array_equal(pixels, engine.run(request, Quiet()).layers[0].pixels)


def test_a_compiled_module_reads_the_weights_brought_back_without_recompiling():
    """torch.compile's graph takes the weights as inputs: after a park and return (new storage) it
    runs on what came back, and nothing recompiles (a recompile would cost minutes on a mode switch)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    net, x = small_net().eval(), torch.randn(1, 4, 8, 8)
    residency = Residency(torch.device("cpu"))
    net.compile(dynamic=False)
    with torch.no_grad():
        before = net(x)
        compiled = counters["frames"]["total"]
        residency.park(net)
        residency._host[net[2].weight].mul_(2)  # so the output tells which weights the graph read
        residency.unpark(net)
        after = net(x)
        with torch.compiler.set_stance("force_eager"):
            expected = net(x)
    assert counters["frames"]["total"] == compiled
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, expected)
