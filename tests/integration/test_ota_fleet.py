"""Fleet operations with ``chorus-models`` as a user runs it: publishing through a mutual-TLS
broker, ``publish --wait`` reporting each device's state (exit 1 when one refused), versions
compared within a bundle name, and ``rollout-status`` reading the retained state topics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fault_tools import TlsFiles

pytest.importorskip("ai_edge_litert")
pytest.importorskip("cryptography")

from ota_harness import RunningAgent, make_bundle

from agent.ota.signing import generate_key
from modeltools.cli import main as chorus_models


def test_publish_and_rollout_status_through_a_mutual_tls_broker(
    mosquitto_factory: Callable[..., Any],
    tls_files: TlsFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """The broker docs/mqtt.md configures: TLS only, a client certificate required."""
    broker = mosquitto_factory(tls=tls_files, require_client_cert=True)
    key = tmp_path / "lab.key"
    generate_key(key)
    bundle = make_bundle(tmp_path, "0.2.0", key)
    connect = ["--broker", f"{broker.host}:{broker.port}", "--tls-ca", str(tls_files.ca_cert)]
    client_cert = ["--tls-cert", str(tls_files.client_cert), "--tls-key", str(tls_files.client_key)]
    publish = ["publish", str(bundle), "--key", str(key), "--target", "group:north"]

    assert chorus_models([*publish, *connect, *client_cert]) == 0
    out = capsys.readouterr().out
    assert "published chorus-demo 0.2.0 as request" in out
    assert "on chorus/_group/north/cmd/update" in out
    rid = out.split("as request ")[1].split()[0]
    assert chorus_models(["rollout-status", "--target", "group:north", *connect, *client_cert]) == 0
    out = capsys.readouterr().out
    assert f"roll-out of chorus-demo 0.2.0, request {rid} to group:north" in out
    assert "0 device(s)" in out  # nobody in the group has reported yet

    # Without the client certificate, or with the wrong CA: one clear line, exit 2.
    assert chorus_models([*publish, *connect, "--timeout-s", "5"]) == 2
    err = capsys.readouterr().err
    assert "closed the connection before accepting it" in err and "--tls-cert" in err
    wrong_ca = [
        "--broker",
        f"{broker.host}:{broker.port}",
        "--tls-ca",
        str(tls_files.other_ca_cert),
    ]
    assert chorus_models([*publish, *wrong_ca, *client_cert]) == 2
    err = capsys.readouterr().err
    assert f"TLS verification of MQTT broker {broker.host}:{broker.port} failed" in err
    assert str(tls_files.other_ca_cert) in err and "cannot reach" not in err
    assert chorus_models([*publish, *connect, "--tls-cert", str(tls_files.client_cert)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def _pump_while(thread: threading.Thread, agents: list[RunningAgent]) -> None:
    """Live audio for the agents while ``thread`` (the CLI) runs: a window every 0.2 s."""
    while thread.is_alive():
        for agent in agents:
            if agent.source.total - agent.source.allowed > 2:
                agent.source.release(1)
        time.sleep(0.2)


def test_publish_waits_for_each_device_and_rollout_status_shows_the_refusal(
    mosquitto_broker: Any,
    running: Callable[..., RunningAgent],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A bundle of another name with a lower version is no downgrade: north-1 confirms it;
    north-2 refuses it (its latency budget is impossible). ``publish --wait`` prints both and
    exits 1; ``rollout-status`` shows the same from the retained states."""
    key = tmp_path / "publisher.key"
    _, public = generate_key(key)
    common = {"groups": ["north"], "trusted_keys": [str(public)], "confirm_windows": 2}
    fleet = [
        running(device="north-1", **common),
        running(device="north-2", latency_budget_ms=0.01, **common),
    ]

    def other_name(bundle: Path, fields: dict[str, Any]) -> None:
        fields["name"] = "chorus-other"

    bundle = make_bundle(tmp_path, "0.0.5", key, other_name)  # below the active 0.1.0
    broker = ["--broker", f"{mosquitto_broker.host}:{mosquitto_broker.port}"]
    argv = ["publish", str(bundle), "--key", str(key), "--target", "group:north", "--wait", "60"]
    status: list[int] = []
    cli = threading.Thread(target=lambda: status.append(chorus_models([*argv, *broker])))
    t0 = time.monotonic()
    cli.start()
    _pump_while(cli, fleet)
    cli.join()
    waited_s = time.monotonic() - t0
    captured = capsys.readouterr()
    with capsys.disabled():
        print(f"\n$ chorus-models {' '.join(argv)}\n{captured.out}{captured.err}")
    assert status == [1], captured.err
    assert "1 device(s) refused or rolled back request" in captured.err
    lines = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    assert "confirmed  chorus-other 0.0.5  chorus-other 0.0.5" in lines["north-1"]
    assert "refused" in lines["north-2"] and "too slow" in lines["north-2"]
    assert "2 device(s): 1 confirmed, 1 refused" in captured.out
    assert waited_s < 55  # it stopped when both had settled, not at the deadline
    assert fleet[0].version == "0.0.5" and fleet[1].version == "0.1.0"
    rid = captured.out.split("as request ")[1].split()[0]

    assert chorus_models(["rollout-status", "--target", "group:north", *broker]) == 1
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"$ chorus-models rollout-status --target group:north\n{out}")
    assert f"roll-out of chorus-other 0.0.5, request {rid} to group:north" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("north-")}
    assert rows["north-1"].split()[1] == "confirmed"
    assert rows["north-2"].split()[1] == "refused" and "too slow" in rows["north-2"]
    assert chorus_models(["rollout-status", "--json", *broker]) == 1
    doc = json.loads(capsys.readouterr().out)
    states = {d["device"]: d["state"] for d in doc["devices"]}
    assert states == {"north-1": "confirmed", "north-2": "refused"}
    assert chorus_models(["rollout-status", "--target", "device:south-9", *broker]) == 2
    assert "no retained announcement on chorus/south-9/cmd/update" in capsys.readouterr().err
    for agent in fleet:
        agent.close()


def test_versions_compare_within_a_bundle_name(
    running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    """chorus-other 0.0.5 after chorus-demo 0.1.0 is a change of model, not a downgrade;
    chorus-other 0.0.4 after it is one."""
    agent = running()

    def other_name(bundle: Path, fields: dict[str, Any]) -> None:
        fields["name"] = "chorus-other"

    rid = agent.publish(make_bundle(tmp_path, "0.0.5", agent.key, other_name))
    agent.wait_state("activated", rid, timeout_s=30.0, reserve=40)
    assert agent.engine.models.bundle.manifest.name == "chorus-other" and agent.version == "0.0.5"
    agent.pump(3)
    agent.wait_state("confirmed", rid)
    older = agent.publish(make_bundle(tmp_path, "0.0.4", agent.key, other_name))
    reason = agent.wait_state("refused", older)["reason"]
    assert reason.startswith(
        "downgrade refused: chorus-other 0.0.4 is older than the active chorus-other 0.0.5"
    )
    agent.close()
