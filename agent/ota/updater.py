"""The agent's side of OTA updates: the state machine, run beside the live pipeline.

::

    announced -> receiving -> received -> verified -> smoke_tested -> activated -> confirmed
        \\            \\           \\          \\             \\              \\-> rolled_back
         `------------`-----------`----------`-------------`-> refused (with the reason)

Three threads share the work. paho's network thread only queues messages. The worker thread
checks announcements, stores chunks, verifies, runs the smoke test in a fresh interpreter and
loads the new models (while the old ones keep running). The pipeline thread calls
:meth:`Updater.on_tick` between two windows: that is where the prepared models are switched in
(store links first, then the in-memory models), and where the probation is watched: after
``updates.confirm_windows`` windows without an error the update is confirmed, and at the first
window error (NaN logits count) it is rolled back to the models still held in memory.

Every transition is published, retained, on ``<prefix>/<device>/models/state``
(``chorus.models.state/1``) with the reason for any refusal or rollback.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.errors import ChorusError
from agent.models.stages import LoadedModels
from agent.ota.announce import (
    Announcement,
    check_addressed,
    chunk_topic,
    parse_announcement,
    parse_chunk_topic,
    parse_rollback,
    utc_text,
)
from agent.ota.install import UpdateRefused, check_announcement, verify_archive
from agent.ota.signing import TrustedKeys
from agent.ota.smoke import run_smoke_test
from agent.ota.store import ModelStore, StoreError, bundle_identity
from agent.ota.transfer import ChunkAssembler, download
from agent.topics import command_topic, fleet_command_topic, group_command_topic, models_state_topic

if TYPE_CHECKING:
    from agent.app import Engine
    from agent.audio.chunk import AudioSource
    from agent.pipeline import StreamProcessor

log = logging.getLogger(__name__)

STATE_SCHEMA = "chorus.models.state/1"
SEEN_MAX = 500  # request ids remembered against replays
PROGRESS_EVERY_S = 1.0


def store_for(config: AgentConfig) -> ModelStore:
    """The model store ``config`` names (``updates.store_dir``, else ``<state dir>/models``)."""
    from agent.app import factory_bundle_path
    from agent.state import default_state_dir

    u = config.updates
    root = Path(u.store_dir) if u.store_dir else default_state_dir() / "models"
    return ModelStore(root, factory_bundle_path(config))


def prepare_start(config: AgentConfig) -> str | None:
    """Call once when the live agent starts, before loading models: counts the restart of an
    unconfirmed update and rolls a crash loop back. Returns the rollback reason, if any."""
    result = store_for(config).startup(config.updates.max_restarts)
    if result.rolled_back:
        log.error("model update rolled back at start-up: %s", result.rolled_back)
        with store_for(config).transaction() as state:
            state.setdefault("updater", {})["startup_rollback"] = result.rolled_back
    return result.rolled_back


def latency_budget_ms(config: AgentConfig) -> float:
    budget = config.updates.latency_budget_ms
    return budget if budget is not None else config.audio.hop_s * 1e3 / 2


@dataclass
class _Handover:
    """Prepared by the worker, applied by the pipeline thread between two windows."""

    op: str  # "activate" | "rollback"
    models: LoadedModels
    path: Path
    request_id: str | None
    reason: str


@dataclass
class _Probation:
    windows0: int
    errors0: int
    old_models: LoadedModels | None  # None after a restart: loaded again to roll back
    request_id: str | None
    bundle: tuple[str, str]


@dataclass
class _Job:
    ann: Announcement
    topic: str  # the update topic it came on
    assembler: ChunkAssembler | None
    deadline: float
    last_progress: float = 0.0


def _chunks_filter(job: _Job) -> str:
    return chunk_topic(job.topic, job.ann.request_id, 0).rsplit("/", 1)[0] + "/+"


class Updater:
    """OTA updates for one running agent (module docstring). ``start()`` connects."""

    def __init__(
        self,
        config: AgentConfig,
        engine: Engine,
        *,
        store: ModelStore | None = None,
        client_factory: Any = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store or store_for(config)
        self.trusted = TrustedKeys.load(config.updates.trusted_keys)
        prefix, device = config.mqtt.topic_prefix, config.device_id
        self.state_topic = models_state_topic(prefix, device)
        groups = config.updates.groups
        self.update_topics = [
            command_topic(prefix, device, "update"),
            *(group_command_topic(prefix, g, "update") for g in groups),
            fleet_command_topic(prefix, "update"),
        ]
        self.rollback_topics = [
            command_topic(prefix, device, "rollback"),
            *(group_command_topic(prefix, g, "rollback") for g in groups),
            fleet_command_topic(prefix, "rollback"),
        ]
        self._client_factory = client_factory
        self._client: Any = None
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._handover: _Handover | None = None
        self._probation: _Probation | None = None
        self._rolling_back = False
        self._job: _Job | None = None
        self._last_report: bytes | None = None
        self._connected = False
        self._connect_fail_logged = False
        self._worker = threading.Thread(target=self._run, name="ota-updater", daemon=True)
        self._resume_state()

    # -- lifecycle ----------------------------------------------------------------------------

    def _resume_state(self) -> None:
        """Pick up what the store says: a pending activation (probation goes on), a rollback
        done at start-up (reported), an unfinished transfer (resumed)."""
        state = self.store.read_state()
        pending = state.get("pending")
        if pending:
            self._probation = _Probation(
                -1, -1, None, pending.get("request_id"), (pending["name"], pending["version"])
            )
        upd = state.get("updater", {})
        reason = upd.get("startup_rollback")
        if reason:
            self._report("rolled_back", reason=reason)
            with self.store.transaction() as st:
                st.setdefault("updater", {}).pop("startup_rollback", None)
        job = upd.get("job")
        if job:
            self._queue.put(("resume:" + job["topic"], json.dumps(job["doc"]).encode()))

    def start(self) -> Updater:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.sinks.mqtt import configure_client

        m = self.config.mqtt
        client_id = f"{m.client_id or 'chorus-' + self.config.device_id}-ota"
        if self._client_factory is not None:
            client = self._client_factory(client_id)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
            )
        configure_client(client, m)
        client.reconnect_delay_set(
            min_delay=max(1, round(m.reconnect_backoff.initial_s)),
            max_delay=max(1, round(m.reconnect_backoff.max_s)),
        )
        client.max_queued_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        client.loop_start()
        self._worker.start()
        log.info("OTA updates: following %s", ", ".join(self.update_topics))
        return self

    def close(self) -> None:
        """Stop the worker and disconnect. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected

    # -- MQTT (network thread) ----------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("OTA: broker refused the connection: %s", rc)
            return
        topics = [*self.update_topics, *self.rollback_topics]
        job = self._job
        if job is not None and job.assembler is not None:
            topics.append(_chunks_filter(job))
        client.subscribe([(t, 1) for t in topics])
        self._connected = True
        self._connect_fail_logged = False
        if self._last_report is not None:  # a broker without persistence lost it
            client.publish(self.state_topic, self._last_report, qos=1, retain=True)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        from agent.sinks.mqtt import connect_error_message

        if self._connect_fail_logged:  # once per outage; the detections sink says it too
            return
        self._connect_fail_logged = True
        m = self.config.mqtt
        ca_file = m.tls.ca_file if m.tls.enabled else None
        exc = sys.exc_info()[1]  # paho calls this while handling the attempt's OSError
        log.warning("OTA: %s; retrying", connect_error_message(exc, f"{m.host}:{m.port}", ca_file))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected = False

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._queue.put((msg.topic, bytes(msg.payload)))

    # -- reporting ----------------------------------------------------------------------------

    def _report(
        self,
        state: str,
        ann: Announcement | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        bundle: tuple[str, str] | None = None,
        **detail: Any,
    ) -> None:
        active = self.engine.models.bundle.manifest
        if ann is not None:
            request_id, bundle = ann.request_id, (ann.name, ann.version)
        payload = {
            "schema": STATE_SCHEMA,
            "device": self.config.device_id,
            "time_utc": utc_text(datetime.now(UTC)),
            "state": state,
            "request_id": request_id,
            "bundle": {"name": bundle[0], "version": bundle[1]} if bundle else None,
            "active": {"name": active.name, "version": active.version},
            "groups": list(self.config.updates.groups),  # for chorus-models rollout-status
            "reason": reason,
            "detail": detail or None,
        }
        level = logging.WARNING if state in ("refused", "rolled_back") else logging.INFO
        log.log(level, "model update %s: %s%s", request_id, state, f": {reason}" if reason else "")
        data = json.dumps(payload, separators=(",", ":")).encode()
        self._last_report = data
        if self._client is not None:
            self._client.publish(self.state_topic, data, qos=1, retain=True)

    # -- worker thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._check_timeout()
                continue
            try:
                self._handle(topic, payload)
            except Exception:  # the updater must never die; the pipeline is not affected
                log.exception("OTA: handling a message on %s failed", topic)

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic.startswith("resume:"):
            self._on_announcement(topic[len("resume:") :], payload, resume=True)
        elif topic == "load-previous:":
            what = json.loads(payload)
            self._prepare_rollback(what["reason"], what["request_id"])
        elif topic in self.update_topics:
            self._on_announcement(topic, payload)
        elif topic in self.rollback_topics:
            self._on_rollback_command(topic, payload)
        elif self._job is not None and self._job.assembler is not None:
            parsed = parse_chunk_topic(self._job.topic, topic)
            if parsed is not None and parsed[0] == self._job.ann.request_id:
                self._on_chunk(parsed[1], payload)

    def _updater_state(self) -> dict[str, Any]:
        return dict(self.store.read_state().get("updater", {}))

    def _on_announcement(self, topic: str, payload: bytes, resume: bool = False) -> None:
        if not payload:
            return  # the publisher cleared the retained announcement
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        rid = doc.get("request_id") if isinstance(doc, dict) else None
        rid = rid if isinstance(rid, str) else None
        upd = self._updater_state()
        last = upd.get("last_by_topic", {}).get(topic)
        if not resume and rid is not None and rid == last:
            return  # the retained announcement again (reconnect, restart): already handled
        self._remember(topic=topic, rid=rid)
        if doc is None:
            self._report("refused", reason=f"announcement on {topic} is not JSON")
            return
        ann = None
        try:
            ann = parse_announcement(doc, self.trusted)
            self._check_addressed(ann.target, topic, "update", f"announcement {ann.request_id}")
            if not resume:
                self._check_replay(rid or "", ann.issued_utc, upd)
            self._remember(seen=ann.request_id, issued=ann.issued_utc)
            if not resume:
                active = self.engine.models.bundle.manifest
                u = self.config.updates
                check_announcement(
                    ann,
                    (active.name, active.version),
                    allow_downgrade=u.allow_downgrade,
                    refused_before=self.store.is_refused(ann.name, ann.version),
                    max_bundle_bytes=u.max_bundle_bytes,
                    max_chunk_bytes=u.max_chunk_bytes,
                )
        except ChorusError as exc:
            self._report("refused", ann, request_id=rid, reason=str(exc))
            return
        if self._job is not None and self._job.ann.request_id != ann.request_id:
            self._fail(self._job, f"superseded by announcement {ann.request_id}")
        installed = None
        with self.store.transaction() as st:
            upd = st.setdefault("updater", {})
            old = upd.get("job") or {}
            if resume and old.get("doc", {}).get("request_id") == ann.request_id:
                installed = old.get("installed")
            else:
                upd["job"] = {"topic": topic, "doc": doc}
        if installed and Path(installed).is_dir():
            # Verified and smoke-tested before a restart, not yet activated: prepare it again.
            job = _Job(ann, topic, None, time.monotonic())
            self._job = job
            self._smoke_and_prepare(job, Path(installed))
            return
        self._start_job(ann, topic)

    def _check_addressed(self, target: str, topic: str, command: str, what: str) -> None:
        """Refuse a signed command for another target, or re-published on another topic."""
        check_addressed(
            target,
            topic,
            command,
            prefix=self.config.mqtt.topic_prefix,
            device_id=self.config.device_id,
            groups=list(self.config.updates.groups),
            what=what,
        )

    def _check_replay(self, rid: str, issued: datetime, upd: dict[str, Any]) -> None:
        if rid in upd.get("seen", []):
            raise UpdateRefused(f"replayed announcement: request {rid} was already handled")
        last = upd.get("last_issued_utc")
        if last is not None and issued <= datetime.fromisoformat(last):
            raise UpdateRefused(
                f"stale announcement: issued {utc_text(issued)}, not after the last accepted "
                f"one ({last})"
            )

    def _remember(
        self,
        topic: str | None = None,
        rid: str | None = None,
        seen: str | None = None,
        issued: datetime | None = None,
    ) -> None:
        with self.store.transaction() as st:
            upd = st.setdefault("updater", {})
            if topic is not None and rid is not None:
                upd.setdefault("last_by_topic", {})[topic] = rid
            if seen is not None and seen not in upd.setdefault("seen", []):
                upd["seen"] = [*upd["seen"], seen][-SEEN_MAX:]
            if issued is not None:
                last = upd.get("last_issued_utc")
                if last is None or issued > datetime.fromisoformat(last):
                    upd["last_issued_utc"] = issued.isoformat()

    def _job_dir(self, ann: Announcement) -> Path:
        return self.store.incoming_dir / ann.request_id

    def _start_job(self, ann: Announcement, topic: str) -> None:
        self.store.incoming_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.config.updates.transfer_timeout_s
        self._report("announced", ann, transfer="url" if ann.via_url else f"{ann.chunks} chunk(s)")
        if ann.via_url:
            job = _Job(ann, topic, None, deadline)
            self._job = job
            try:
                archive = download(ann, self._job_dir(ann), self._stop)
            except ChorusError as exc:
                self._fail(job, str(exc))
                return
            self._report("received", ann, size_bytes=ann.size_bytes)
            self._install(job, archive)
            return
        assembler = ChunkAssembler(self._job_dir(ann), ann)
        job = _Job(ann, topic, assembler, deadline)
        self._job = job
        if assembler.complete:  # resumed after a restart with every chunk on disk
            self._finish_transfer(job)
            return
        self._report("receiving", ann, chunks_received=assembler.received, chunks=ann.chunks)
        if self._client is not None:
            self._client.subscribe(_chunks_filter(job), qos=1)

    def _on_chunk(self, index: int, data: bytes) -> None:
        job = self._job
        assert job is not None and job.assembler is not None
        try:
            new = job.assembler.add(index, data)
        except ChorusError as exc:
            self._fail(job, str(exc))
            return
        if job.assembler.complete:
            self._finish_transfer(job)
        elif new and time.monotonic() - job.last_progress >= PROGRESS_EVERY_S:
            job.last_progress = time.monotonic()
            a = job.ann
            self._report("receiving", a, chunks_received=job.assembler.received, chunks=a.chunks)

    def _finish_transfer(self, job: _Job) -> None:
        assert job.assembler is not None
        self._unsubscribe_chunks(job)
        try:
            archive = job.assembler.assemble()
        except ChorusError as exc:
            self._fail(job, str(exc))
            return
        self._report("received", job.ann, size_bytes=job.ann.size_bytes, chunks=job.ann.chunks)
        self._install(job, archive)

    def _unsubscribe_chunks(self, job: _Job) -> None:
        if self._client is not None and job.assembler is not None:
            self._client.unsubscribe(_chunks_filter(job))

    def _check_timeout(self) -> None:
        job = self._job
        if job is not None and job.assembler is not None and time.monotonic() > job.deadline:
            a = job.assembler
            self._fail(
                job,
                f"incomplete transfer: {a.received} of {job.ann.chunks} chunks after "
                f"{self.config.updates.transfer_timeout_s:g} s (truncated chunk stream?); "
                f"missing {a.missing()[:10]}",
            )

    def _end_job(self, job: _Job) -> None:
        self._unsubscribe_chunks(job)
        if self._job is job:
            self._job = None
        self._forget_job(job.ann.request_id)
        shutil.rmtree(self._job_dir(job.ann), ignore_errors=True)

    def _forget_job(self, request_id: str | None) -> None:
        with self.store.transaction() as st:
            upd = st.setdefault("updater", {})
            if (upd.get("job") or {}).get("doc", {}).get("request_id") == request_id:
                upd.pop("job", None)

    def _fail(self, job: _Job, reason: str) -> None:
        self._end_job(job)
        self._report("refused", job.ann, reason=reason)

    def _install(self, job: _Job, archive: Path) -> None:
        """received -> verified: unpack, check, move into the store."""
        ann = job.ann
        try:
            unpacked, bundle = verify_archive(archive, self._job_dir(ann), ann, self.trusted)
            running = self.engine.models
            m = bundle.manifest
            if (m.sample_rate_hz, m.window_samples) != (
                running.sample_rate_hz,
                running.window_samples,
            ):
                raise UpdateRefused(
                    f"bundle runs at {m.sample_rate_hz} Hz / {m.window_samples} samples, the "
                    f"running pipeline at {running.sample_rate_hz} Hz / "
                    f"{running.window_samples}: it cannot be switched between two windows"
                )
            installed = self.store.install(unpacked, m.name, m.version)
        except ChorusError as exc:
            self._fail(job, str(exc))
            return
        with self.store.transaction() as st:
            st.setdefault("updater", {}).setdefault("job", {})["installed"] = str(installed)
        shutil.rmtree(self._job_dir(ann), ignore_errors=True)  # parts, archive: no longer needed
        self._report("verified", ann, key_id=ann.key_id)
        self._smoke_and_prepare(job, installed)

    def _smoke_and_prepare(self, job: _Job, installed: Path) -> None:
        """verified -> smoke_tested: the smoke test in a fresh interpreter, then the models
        loaded here (with the config's checks) and handed to the pipeline thread."""
        from agent.app import build_models

        ann, u = job.ann, self.config.updates
        try:
            smoke = run_smoke_test(
                installed,
                num_threads=self.config.inference.num_threads,
                budget_ms=latency_budget_ms(self.config),
                timeout_s=u.smoke_timeout_s,
            )
            models = build_models(self.config, installed)  # also the config's species lists
        except ChorusError as exc:
            self._fail(job, str(exc))
            self.store.discard(installed)  # the refused bundle leaves the store
            return
        if self._job is job:
            self._job = None  # the job record stays in the store until the switch
        self._report(
            "smoke_tested", ann, latency_ms=round(smoke.latency_ms, 1), golden=smoke.golden
        )
        with self._lock:
            self._handover = _Handover(
                "activate", models, installed, ann.request_id, f"update {ann.request_id}"
            )

    def _on_rollback_command(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        rid = None
        try:
            doc = json.loads(payload)
            rid = doc.get("request_id") if isinstance(doc, dict) else None
            cmd = parse_rollback(doc, self.trusted)
            what = f"rollback command {cmd.request_id}"
            self._check_addressed(cmd.target, topic, "rollback", what)
            self._check_replay(cmd.request_id, cmd.issued_utc, self._updater_state())
            self._remember(seen=cmd.request_id, issued=cmd.issued_utc)
        except (ChorusError, ValueError) as exc:
            rid = rid if isinstance(rid, str) else None
            self._report("refused", request_id=rid, reason=f"rollback command refused: {exc}")
            return
        self._prepare_rollback(f"requested by rollback command {cmd.request_id}", cmd.request_id)

    def _prepare_rollback(self, reason: str, request_id: str | None) -> None:
        """Load the previous bundle (worker thread) and hand it to the pipeline thread."""
        from agent.app import build_models

        back = self.store.previous()
        if back is None:
            self._rolling_back = False
            self._report("refused", request_id=request_id, reason="nothing to roll back to")
            return
        try:
            models = build_models(self.config, back)
        except ChorusError as exc:
            self._rolling_back = False
            self._report("refused", request_id=request_id, reason=f"cannot load {back}: {exc}")
            return
        with self._lock:
            self._handover = _Handover("rollback", models, back, request_id, reason)

    # -- pipeline thread ----------------------------------------------------------------------

    def on_tick(self, processor: StreamProcessor, source: AudioSource) -> None:
        """Between two windows: apply a prepared switch, watch the probation."""
        stats = self.engine.stats
        with self._lock:
            handover = self._handover
            if handover is not None and (handover.op == "rollback" or self._probation is None):
                self._handover = None
            else:
                handover = None
        if handover is not None:
            self._apply(handover, processor)
        p = self._probation
        if p is None or self._rolling_back:
            return
        if p.windows0 < 0:  # resumed after a restart: count from now
            p.windows0, p.errors0 = stats.windows, stats.window_errors
        errors = stats.window_errors - p.errors0
        windows = stats.windows - p.windows0
        if errors > 0:
            reason = f"{errors} failed window(s) within {windows + errors} windows after activation"
            self._rollback_now(reason, processor)
        elif windows >= self.config.updates.confirm_windows:
            self._probation = None
            try:
                self.store.confirm()
            except (ChorusError, OSError) as exc:  # the switch stands; only the record failed
                log.error("OTA: could not record the confirmation: %s", exc)
            self._report(
                "confirmed", request_id=p.request_id, bundle=p.bundle, healthy_windows=windows
            )

    def _apply(self, h: _Handover, processor: StreamProcessor) -> None:
        identity = bundle_identity(h.path)
        if h.op == "activate":
            old_models = self.engine.models
            try:
                self.store.activate(h.path, h.request_id, h.reason)
            except (ChorusError, OSError) as exc:
                self._report("refused", request_id=h.request_id, bundle=identity, reason=str(exc))
                self.store.discard(h.path)
                return
            finally:
                self._forget_job(h.request_id)
            self.engine.swap_models(h.models, processor)
            self._probation = _Probation(
                self.engine.stats.windows,
                self.engine.stats.window_errors,
                old_models,
                h.request_id,
                identity,
            )
            self._report("activated", request_id=h.request_id, bundle=identity)
            return
        bad = self.engine.models.bundle.manifest
        try:
            self.store.rollback(h.reason)
        except (ChorusError, OSError) as exc:
            self._rolling_back = False
            self._report("refused", request_id=h.request_id, reason=f"rollback failed: {exc}")
            return
        self.engine.swap_models(h.models, processor)
        self._probation = None
        self._rolling_back = False
        self._report(
            "rolled_back", request_id=h.request_id, bundle=(bad.name, bad.version), reason=h.reason
        )

    def _rollback_now(self, reason: str, processor: StreamProcessor) -> None:
        p = self._probation
        assert p is not None
        if p.old_models is None:  # after a restart: the worker loads the previous bundle
            self._rolling_back = True
            what = {"reason": reason, "request_id": p.request_id}
            self._queue.put(("load-previous:", json.dumps(what).encode()))
            return
        try:
            back = self.store.rollback(reason)
        except (StoreError, OSError) as exc:
            log.error("OTA: cannot roll back: %s", exc)
            self._probation = None
            return
        del back
        self.engine.swap_models(p.old_models, processor)
        self._probation = None
        self._report("rolled_back", request_id=p.request_id, bundle=p.bundle, reason=reason)
