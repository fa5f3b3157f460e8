"""The server's malloc tuning (backend/memory.py): applied on glibc, left alone where the user configured
malloc, a no-op elsewhere, and run where it should. What it saves is measured in bench/slow_reader.py,
not here (RSS figures on a shared machine are no test)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from backend import cli, memory


@pytest.fixture
def fresh(monkeypatch):
    """The module as a new process sees it, whatever the tests before did; malloc keeps any tuning."""
    monkeypatch.setattr(memory, "_libc", None)
    monkeypatch.setattr(memory, "_tuned", False)
    for name in ("EASEL_MALLOC", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_on_glibc_the_threshold_is_set_and_trimming_works(fresh):
    if memory.glibc() is None:
        pytest.skip("not glibc: nothing to tune (see the no-op test)")
    assert memory.tune() is True
    memory.release()  # malloc_trim: returns whether it gave pages back; it must simply not fail
    # a buffer over the threshold is mapped on its own and unmapped when freed: the tuned process still works
    assert bytearray(8 * memory.MMAP_THRESHOLD)[-1] == 0


@pytest.mark.parametrize("env", [{"EASEL_MALLOC": "system"}, {"EASEL_MALLOC": "SYSTEM"},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_a_user_who_configured_malloc_keeps_it(fresh, env):
    for name, value in env.items():
        fresh.setenv(name, value)
    assert memory.user_configured()
    assert memory.tune() is False
    memory.release()  # untuned: does nothing


def test_unrelated_glibc_tunables_do_not_turn_tuning_off(fresh):
    fresh.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert not memory.user_configured()


def test_elsewhere_it_is_a_no_op(fresh):
    fresh.setattr(memory.sys, "platform", "darwin")
    assert memory.glibc() is None
    assert memory.tune() is False
    memory.release()


def test_a_libc_that_is_not_glibc_is_left_alone(fresh):
    class Musl:  # has malloc but no gnu_get_libc_version (nor mallopt / malloc_trim)
        def __init__(self, name):
            pass

    fresh.setattr(memory.ctypes, "CDLL", Musl)
    assert memory.glibc() is None
    assert memory.tune() is False


def test_no_c_library_at_all_is_left_alone(fresh):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    fresh.setattr(memory.ctypes, "CDLL", missing)
    assert memory.glibc() is None and memory.tune() is False


def test_serve_tunes_malloc_before_anything_else(fresh, tmp_path):
    calls = []
    fresh.setattr(memory, "tune", lambda: calls.append("tune") or True)
    # a config that cannot load: serve stops at once, after the tuning
    bad = tmp_path / "easel.toml"
    bad.write_text("[server\n")
    assert cli.main(["serve", "--config", str(bad)]) == 2
    assert calls == ["tune"]


def test_the_worker_releases_memory_after_each_job(client, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release", lambda: calls.append(time.perf_counter()))
    client.run("generate", prompt="x", steps=2, width=64, height=64, seed=0)
    deadline = time.perf_counter() + 10  # it runs after the ending was sent
    while not calls and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert calls


@pytest.mark.parametrize("latent_size, preview_size, decoded, size", [
    ((64, 64), 256, (32, 32), (256, 256)), ((64, 96), 256, (22, 32), (256, 176)),
    ((64, 64), 512, (64, 64), (512, 512)), ((8, 8), 256, (8, 8), (256, 256))])
def test_taesd_previews_decode_at_about_the_asked_size(demo_root, latent_size, preview_size, decoded, size):
    from diffusers import AutoencoderTiny

    from backend.engine.previews import Previewer

    taesd, seen = AutoencoderTiny.from_pretrained(demo_root / "taesd"), []
    real = taesd.decode
    taesd.decode = lambda latent: seen.append(tuple(latent.shape[-2:])) or real(latent)
    preview = Previewer(None, taesd)(torch.randn(1, 4, *latent_size), preview_size)
    assert seen == [decoded]  # not the job's full size, only to be shrunk afterwards
    assert preview.size == size
    assert np.asarray(preview).std() > 0
