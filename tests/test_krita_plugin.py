"""The Krita plugin inside real Krita: kritarunner (offscreen) against a real server on the demo model.

One kritarunner process imports the built zip with Krita's own plugin importer and runs every
scenario of tests/krita_scripts/easel_scenarios.py (a Krita start costs seconds); each test here checks one
scenario's verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from backend.packaging import build

KRITARUNNER = shutil.which("kritarunner")
KRITA_SECONDS = 600  # the whole Krita session, every scenario: one module fixture
# (the first test's setup runs that session: pytest's own 300 s per test cut it short on a busy machine)
pytestmark = [pytest.mark.skipif(KRITARUNNER is None, reason="kritarunner is not installed (apt-get install krita)"),
              pytest.mark.timeout(KRITA_SECONDS + 120)]
SCRIPTS = Path(__file__).parent / "krita_scripts"
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "a-token-for-the-lan"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory):
    """A server in a process of its own, which a scenario stops (SIGSTOP) and lets run again, and at last
    kills and starts again on the same port (its ``command``)."""
    from bench.serverproc import ServerProcess
    process = ServerProcess(tmp_path_factory.mktemp("stoppable"))
    yield process
    os.kill(process.process.pid, signal.SIGCONT)  # a failed scenario may leave it stopped (or it was restarted)
    process.stop()


@pytest.fixture(scope="module")
def secure(demo_config, engine, tmp_path_factory):
    """A wss:// server with a self-signed certificate (``easel cert``) and a token (as one on the LAN must
    have), and that certificate."""
    import dataclasses

    from backend.server import ServerThread
    from backend.tls import make_cert
    cert, key = make_cert(tmp_path_factory.mktemp("cert"), ["127.0.0.1"])
    config = dataclasses.replace(demo_config, tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    with ServerThread(config, engine) as running:
        yield running, cert


@pytest.fixture(scope="module")
def krita_report(server, stoppable, secure, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("krita")
    plugin_zip = build("krita", tmp / "dist")
    home = tmp / "home"
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        # A fresh Krita profile: nothing from the machine's own Krita settings or plugins.
        "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"), "XDG_RUNTIME_DIR": str(tmp / "runtime"),
        "PYTHONPATH": str(SCRIPTS),
        "EASEL_ZIP": str(plugin_zip), "EASEL_URL": server.url,
        "EASEL_STOPPABLE_URL": stoppable.url, "EASEL_STOPPABLE_PID": str(stoppable.process.pid),
        "EASEL_STOPPABLE_CMD": json.dumps(stoppable.command), "EASEL_STOPPABLE_CWD": str(ROOT),
        "EASEL_WSS_URL": secure[0].url, "EASEL_CERT": str(secure[1]), "EASEL_WSS_TOKEN": TOKEN,
        "EASEL_BAD_URL": f"ws://127.0.0.1:{free_port()}/", "EASEL_REPORT": str(tmp / "report.json"),
    }
    (tmp / "runtime").mkdir(mode=0o700)
    for key in ("PYTHONHOME", "VIRTUAL_ENV"):  # Krita's Python is the system one, not this venv
        env.pop(key, None)
    proc = subprocess.run([KRITARUNNER, "-s", "easel_scenarios", "-f", "main"], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=KRITA_SECONDS)
    report_file = tmp / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    if "_setup" in report or not report:
        pytest.fail(f"the Krita run failed before its scenarios (rc {proc.returncode}):\n"
                    f"{report.get('_setup', '')}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report["_rc"] = proc.returncode
    print("Krita seconds:", {k[9:]: v.get("seconds") for k, v in report.items() if k.startswith("scenario_")})
    if report.get("figures"):
        print("Krita figures:", report["figures"])
    return report


SCENARIOS = ["plugin_loads", "inpaint_selection", "a_result_is_one_undo_step",
             "hidden_easel_group_is_shown_with_a_new_result",
             "soft_selection", "refine_whole_image", "refine_big_canvas",
             "generate_whole_image", "control_and_reference", "eight_bit_channel_order", "float_document",
             "sixteen_bit_colours", "cancel_inserts_nothing", "models_refresh_after_a_job",
             "docker_offers_what_the_server_offers", "unreachable_server", "reconnects_by_itself",
             "server_error_is_a_sentence", "cmyk_refused", "docker_buttons",
             "docker_made_after_the_worker_connected", "docker_remove_with_selection_settings",
             "docker_expand", "docker_model_picker", "docker_instruct", "blinked_connection_still_delivers",
             "server_stopped_mid_job",
             "wide_gamut_documents", "ui_thread_budget", "docker_upscale", "docker_wss_with_a_pinned_certificate",
             "documents_changed_under_a_job", "ui_thread_budget_other_profiles", "connection_closed_between_jobs",
             "large_selection_refines_at_full_size",
             "sketch_on_a_transparent_layer_steers", "control_and_reference_layers_from_elsewhere",
             "canvas_beyond_the_servers_limit", "layers_of_their_own_colour_space_and_masks",
             "result_applied_after_the_document_was_converted", "upscale_keeps_the_print_resolution",
             "select_all_refines_at_full_size", "animation_reads_the_frame_shown",
             "docker_says_why_the_server_cancelled", "expand_moves_every_layer_and_undoes",
             "docker_fits_a_narrow_dock", "docker_counts_down_the_jobs_ahead",
             "docker_prompt_completes_loras_and_embeddings"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_in_krita(krita_report, name):
    verdict = krita_report.get(f"scenario_{name}")
    assert verdict is not None, f"scenario {name} did not run"
    assert verdict["ok"], verdict["error"]


def test_kritarunner_exit_status_follows_the_scenarios(krita_report):
    failed = [k for k, v in krita_report.items() if k.startswith("scenario_") and not v["ok"]]
    assert krita_report["_rc"] == (1 if failed else 0)
