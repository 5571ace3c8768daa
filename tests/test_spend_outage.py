"""The spend writer when its store is down: buffer, retry, log once, write once."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from _redis_fixtures import OwnRedis

from governor import Governor
from governor._recorder import SpendRecorder
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import JsonlSpendStore, RedisSpendStore, SpendRecord
from governor.spend import _jsonl as jsonl_module

pytest_plugins = ["_redis_fixtures"]

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RECORDER = "governor._recorder"
# Retry fast, so that an outage of a fraction of a second sees several retries.
FAST = {"retry_initial_s": 0.02, "retry_max_s": 0.1}


def make(i: int) -> SpendRecord:
    return SpendRecord(
        ts=T0 + timedelta(seconds=i),
        task_id="task",
        call_id=f"call-{i:04d}",
        model="gpt-4o-mini",
        cost_usd=Decimal("0.000001") * i,
    )


def submit(recorder: SpendRecorder, indexes: Iterable[int]) -> None:
    for i in indexes:
        recorder.submit(make(i))


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """The recorder's log lines at exactly ``level``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RECORDER and r.levelno == level
    ]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> bool:
    """No governor log line above DEBUG carries a traceback."""
    return not [
        r
        for r in caplog.records
        if r.name.startswith("governor") and r.levelno > logging.DEBUG and r.exc_info
    ]


class SwitchedStore:
    """An in-memory store, idempotent by call id like the shipped ones, that
    can be switched off or told to fail in the middle of a write."""

    url = "redis://user:hunter2@spend.example:6379/0"

    def __init__(self) -> None:
        self.up = True
        self.rows: dict[str, SpendRecord] = {}
        self.writes = 0
        self.fail_after: int | None = None  # store this many, then fail, once

    def record(self, rec: SpendRecord) -> None:
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        self.writes += 1
        if not self.up:
            raise ConnectionError("connection refused")
        for index, rec in enumerate(recs):
            if index == self.fail_after:
                self.fail_after = None
                raise ConnectionError("connection reset mid-batch")
            self.rows.setdefault(rec.call_id, rec)

    def query(self, *args: object, **kwargs: object) -> Iterator[SpendRecord]:
        return iter(sorted(self.rows.values(), key=lambda r: r.ts))


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A private redis-server that keeps its data (AOF) across a kill."""
    server = OwnRedis()
    server.start(
        "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)
    )  # fmt: skip
    yield server
    server.kill()


def stored_call_ids(store: RedisSpendStore) -> list[str]:
    """Every call id in the store's hash, checked against its time index."""
    client = store._client
    in_hash = sorted(k.decode() for k in client.hkeys(store.hash_key))
    in_index = sorted(k.decode() for k in client.zrange(store.index_key, 0, -1))
    assert in_hash == in_index
    return in_hash


def test_redis_stopped_mid_run_buffers_warns_once_and_writes_each_record_once(
    persistent_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed mid-run: one warning, nothing lost; restarted, all written once."""
    caplog.set_level(logging.DEBUG, logger="governor")
    store = RedisSpendStore.from_url(persistent_redis.url, prefix="outage:")
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(5))
    assert recorder.flush() == 0

    persistent_redis.kill()
    submit(recorder, range(5, 10))
    assert recorder.flush(timeout=0.3) == 5  # retried inside, still down
    submit(recorder, range(10, 15))
    time.sleep(0.3)  # more failed retries: they must not log again
    assert recorder.unwritten == 10

    warnings = messages(caplog, logging.WARNING)
    unreachable = [m for m in warnings if "is unreachable" in m]
    assert len(unreachable) == 1, warnings
    assert persistent_redis.url in unreachable[0]
    waiting = re.search(r"; (\d+) spend records wait in memory", unreachable[0])
    assert waiting is not None
    assert 1 <= int(waiting.group(1)) <= 5
    assert len(warnings) == 2  # the outage, and what the flush left unwritten
    assert "5 spend records are not written" in warnings[1]
    assert no_tracebacks(caplog)

    persistent_redis.start()
    assert recorder.flush(timeout=5) == 0
    infos = [m for m in messages(caplog, logging.INFO) if "reachable again" in m]
    assert len(infos) == 1
    assert "wrote the 10 spend records that waited" in infos[0]
    assert recorder.close() == 0
    assert len(messages(caplog, logging.WARNING)) == 2
    assert stored_call_ids(store) == [f"call-{i:04d}" for i in range(15)]
    assert [r.call_id for r in store.query()] == [f"call-{i:04d}" for i in range(15)]
    store.close()


def test_redis_password_is_redacted_in_the_outage_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens at the URL: the warning names it, password hidden."""
    caplog.set_level(logging.INFO, logger="governor")
    url = OwnRedis().url.replace("redis://", "redis://:s3cret@")  # a free port
    store = RedisSpendStore.from_url(url, prefix="outage:")
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(3))
    assert recorder.flush() == 3
    assert recorder.close() == 3
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in text
    assert url.replace(":s3cret@", ":***@") in text
    warnings = messages(caplog, logging.WARNING)
    assert [w.split(" ", 3)[:3] for w in warnings] == [
        ["spend", "store", url.replace(":s3cret@", ":***@")],
        ["spend", "flush:", "3"],
        ["spend", "recorder", "closed:"],
    ]
    assert "3 spend records could not be written" in warnings[2]
    assert no_tracebacks(caplog)


def test_governor_with_a_dead_redis_spend_store_logs_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reported case: 5 calls, Redis down; no traceback, the loss is counted."""
    caplog.set_level(logging.INFO, logger="governor")
    url = OwnRedis().url  # a free port, no server
    gov = Governor(spend=url)
    llm = GovernedLiteLLM(gov)
    with gov.task("outage"):
        for _ in range(5):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Capital of France?"}],
                mock_response="Paris",
                max_tokens=5,
            )
    gov.flush()
    gov.close()
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 3, warnings
    assert "is unreachable" in warnings[0]
    assert url in warnings[0]
    assert "5 spend records are not written" in warnings[1]
    assert "5 spend records could not be written" in warnings[2]
    assert no_tracebacks(caplog)


def test_retry_after_a_lost_reply_writes_no_record_twice(
    own_redis: OwnRedis,
) -> None:
    """A batch stored whose reply was lost is sent again: Redis keeps one copy."""

    class LostReply(RedisSpendStore):
        lost = 2

        def record_many(self, recs: Iterable[SpendRecord]) -> None:
            super().record_many(recs)
            if self.lost:
                self.lost -= 1
                raise redis.exceptions.ConnectionError("reply lost")

    store = LostReply(redis.Redis.from_url(own_redis.url), prefix="lost:")
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(600))  # more than one batch
    assert recorder.flush(timeout=5) == 0
    recorder.close()
    assert stored_call_ids(store) == [f"call-{i:04d}" for i in range(600)]
    store.close()


def test_retry_after_a_batch_failed_part_way_writes_each_record_once() -> None:
    """Half a batch written, then the store fails: the retry doubles nothing."""
    store = SwitchedStore()
    store.fail_after = 100
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(300))
    assert recorder.flush(timeout=5) == 0
    recorder.close()
    assert sorted(store.rows) == [f"call-{i:04d}" for i in range(300)]
    assert recorder.written == 300


def test_a_failed_jsonl_append_is_cut_back_so_the_retry_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-append: the torn lines go, the retry appends each once."""
    path = tmp_path / "trace.jsonl"
    store = JsonlSpendStore(path)
    store.record_many([make(0)])
    before = path.read_bytes()
    real_write_all = jsonl_module._write_all
    failures = [1]

    def disk_full(fd: int, data: bytes) -> None:
        if failures:
            failures.pop()
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(jsonl_module, "_write_all", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.record_many([make(1), make(2), make(3)])
    assert path.read_bytes() == before

    failures.append(1)
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(1, 6))
    assert recorder.flush(timeout=5) == 0
    recorder.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == [
        f"call-{i:04d}" for i in range(6)
    ]


_APPENDER = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from governor.spend import JsonlSpendStore, SpendRecord

store = JsonlSpendStore(sys.argv[1])
records = [
    SpendRecord(ts=datetime(2026, 1, 1, tzinfo=UTC), task_id="other",
                call_id=f"other-{i}", model="gpt-4o-mini", cost_usd=Decimal(0))
    for i in range(5)
]
print("ready", flush=True)
sys.stdin.readline()
store.record_many(records)
"""


def test_a_failed_append_cuts_back_only_its_own_lines_with_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process appends while this one's write fails part way: the
    cut takes this process's torn lines only, never the other's records."""
    path = tmp_path / "shared.jsonl"
    JsonlSpendStore(path).record_many([make(0)])
    other = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdin is not None
    assert other.stdout is not None
    assert other.stdout.readline() == "ready\n"

    def disk_full_meanwhile(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        torn = path.stat().st_size
        print(file=other.stdin, flush=True)  # the other process appends now
        waited = time.monotonic() + 2.0  # given the chance, not asserted
        while path.stat().st_size == torn and time.monotonic() < waited:
            time.sleep(0.01)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl_module, "_write_all", disk_full_meanwhile)
    with pytest.raises(OSError, match="No space"):
        JsonlSpendStore(path).record_many([make(1), make(2), make(3)])
    assert other.wait(timeout=30) == 0  # a hang guard

    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == [
        "call-0000",
        *(f"other-{i}" for i in range(5)),
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_an_append_keeps_no_lock_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked while this process appends (another thread's work)
    holds a copy of the file's descriptor; other processes' appends must
    not wait on it, nor the child's own on the parent's thread lock."""
    path = tmp_path / "shared.jsonl"
    store = JsonlSpendStore(path)
    real_write_all = jsonl_module._write_all
    children: list[int] = []

    def fork_meanwhile(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports by its exit status
            try:
                monkeypatch.setattr(jsonl_module, "_write_all", real_write_all)
                store.record_many([make(20)])
                time.sleep(30)  # an idle worker, alive while others append
            finally:
                os._exit(0)
        children.append(pid)

    monkeypatch.setattr(jsonl_module, "_write_all", fork_meanwhile)
    store.record_many([make(0)])
    monkeypatch.setattr(jsonl_module, "_write_all", real_write_all)
    try:
        waited = time.monotonic() + 30  # a hang guard: the child's own append
        while len(path.read_text(encoding="utf-8").splitlines()) < 2:
            assert time.monotonic() < waited, "the child's append hung"
            time.sleep(0.01)
        other = subprocess.run(
            [sys.executable, "-c", _APPENDER, str(path)],
            input="\n",
            capture_output=True,
            text=True,
            timeout=30,  # a hang guard: it waited on the child's lock
        )
    finally:
        os.kill(children[0], signal.SIGKILL)
        os.waitpid(children[0], 0)
    assert other.returncode == 0, other.stderr
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["call_id"] for line in lines) == [
        "call-0000",
        "call-0020",
        *(f"other-{i}" for i in range(5)),
    ]


def test_a_full_buffer_drops_the_oldest_and_logs_the_count_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past max_buffered the oldest go; the count is logged once per outage."""
    caplog.set_level(logging.INFO, logger="governor")
    store = SwitchedStore()
    recorder = SpendRecorder(store, max_buffered=4, **FAST)
    store.up = False
    submit(recorder, range(10))
    assert recorder.flush() == 4
    assert recorder.dropped == 6
    store.up = True
    assert recorder.flush(timeout=5) == 0
    assert sorted(store.rows) == [f"call-{i:04d}" for i in range(6, 10)]
    dropped = [m for m in messages(caplog, logging.WARNING) if "were dropped" in m]
    assert dropped == [
        "6 spend records were dropped, the oldest first, while spend store "
        "redis://user:***@spend.example:6379/0 was unreachable (more than 4 waited)"
    ]
    infos = messages(caplog, logging.INFO)
    assert len(infos) == 1
    assert "wrote the 4 spend records that waited" in infos[0]

    # A second outage counts its own drops.
    store.up = False
    submit(recorder, range(10, 16))
    assert recorder.close() == 4
    dropped = [m for m in messages(caplog, logging.WARNING) if "were dropped" in m]
    assert len(dropped) == 2
    assert dropped[1].startswith("2 spend records")
    assert no_tracebacks(caplog)


def test_retries_back_off_while_the_store_is_down() -> None:
    """The writer retries with growing waits, not in a tight loop."""
    store = SwitchedStore()
    recorder = SpendRecorder(store, retry_initial_s=0.01, retry_max_s=0.08)
    store.up = False
    recorder.submit(make(0))
    time.sleep(0.5)
    # Waits of 0.005-0.01, 0.01-0.02, ... then at most 0.08 s: 6 to 16 tries.
    assert 4 <= store.writes <= 20, store.writes
    store.up = True
    assert recorder.flush(timeout=5) == 0
    recorder.close()


def test_a_paused_redis_times_out_and_every_record_lands_once(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that hangs (SIGSTOP) is down too; flush(timeout) returns in time."""
    caplog.set_level(logging.INFO, logger="governor")
    client = redis.Redis.from_url(own_redis.url, socket_timeout=0.2)
    store = RedisSpendStore(client, prefix="paused:")
    recorder = SpendRecorder(store, **FAST)
    submit(recorder, range(3))
    assert recorder.flush() == 0
    own_redis.pause()
    try:
        submit(recorder, range(3, 8))
        started = time.monotonic()
        assert recorder.flush(timeout=0.5) == 5
        assert time.monotonic() - started < 2.0
    finally:
        own_redis.resume()
    assert recorder.flush(timeout=10) == 0
    assert recorder.close() == 0
    assert stored_call_ids(store) == [f"call-{i:04d}" for i in range(8)]
    assert (
        len([m for m in messages(caplog, logging.WARNING) if "unreachable" in m]) == 1
    )
    store.close()


def test_close_with_a_timeout_retries_until_the_store_is_back() -> None:
    """close(timeout) keeps retrying; a store back in time loses nothing."""
    store = SwitchedStore()
    recorder = SpendRecorder(store, **FAST)
    store.up = False
    submit(recorder, range(3))
    assert recorder.flush() == 3

    def come_back() -> None:
        time.sleep(0.2)
        store.up = True

    threading.Thread(target=come_back).start()
    assert recorder.close(timeout=5) == 0
    assert sorted(store.rows) == [f"call-{i:04d}" for i in range(3)]
    assert recorder.close() == 0  # a second close does nothing


def test_observers_see_each_record_once_while_the_store_is_down() -> None:
    """The anomaly monitor is fed at once, not held back or repeated by retries."""
    seen: list[str] = []
    store = SwitchedStore()
    store.up = False
    recorder = SpendRecorder(store, observers=[lambda r: seen.append(r.call_id)])
    submit(recorder, range(4))
    recorder.flush()
    recorder.flush()
    assert seen == [f"call-{i:04d}" for i in range(4)]
    store.up = True
    assert recorder.close() == 0
    assert seen == [f"call-{i:04d}" for i in range(4)]


def test_submit_to_a_full_queue_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """A writer that cannot keep up: dropped records counted, one warning."""
    caplog.set_level(logging.INFO, logger="governor")
    gate = threading.Event()
    recorder = SpendRecorder(
        SwitchedStore(), observers=[lambda _: gate.wait(5)], max_queue=2
    )
    submit(recorder, range(20))
    gate.set()
    assert recorder.dropped >= 10
    full = [m for m in messages(caplog, logging.WARNING) if "queue full" in m]
    assert len(full) == 1
    assert recorder.close() == 0


def test_a_recorder_with_no_store_names_whom_its_records_go_to() -> None:
    """Its warnings said records were 'not written to (none)'."""
    recorder = SpendRecorder(None, observers=[lambda record: None])
    assert recorder.where == "the anomaly monitor (no spend store)"
    assert recorder.close(1.0) == 0
