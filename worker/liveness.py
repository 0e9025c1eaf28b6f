"""Liveness: every worker process proves it is alive to Redis, says which pieces it holds, and puts the pieces of a
worker that fell silent back on their queues; leases make sure a piece's result is kept once.

Why not the broker's visibility timeout: an unacknowledged Celery task comes back only when that timeout expires
(an hour by default, because it must outlast the longest healthy task), so a worker lost to an OOM kill, a
reclaimed spot node or ``kill -9`` would stall its film for up to an hour. The timeout stays as the last line of
defence; this module is the recovery.

Keys (all values plain strings or JSON; times are Redis server time, so clocks of different nodes never matter):

* ``tinct:workers`` (sorted set): worker id -> time of its last heartbeat. A worker id is ``host:pid``.
* ``tinct:worker:<id>:held`` (hash): ``<task id>|<job id>|<piece>`` -> the task (name, arguments, queue, delivery
  tag, node, seconds since it last made progress), written when the task starts and refreshed by every heartbeat.
* ``tinct:worker:<id>:leases`` (set): the lease keys it took, so a recovery can release exactly those.
* ``tinct:job:<job>:lease:<piece>``: the one holder allowed to record the piece's result (``<worker id>|<nonce>``).
* ``tinct:requeue`` (hash): tasks taken from a silent worker, waiting to be published again (at least once), each
  with the outcome decided for it once a drain has recorded it; ``tinct:requeue:claim:<field>``: the process
  carrying that entry out (expires after a liveness window).
* ``tinct:job:<job>:deaths`` (hash): piece -> workers that died holding it in a row; ``:requeued`` (list): events.

How a recovery stays race-free and idempotent: a heartbeat thread in every worker process (:class:`Heartbeat`) beats
every ``heartbeat_interval_s`` and, once it has itself been beating for a whole liveness window (so that a Redis
restart, after which every beat looks old, never makes it reap live workers), looks for workers silent for longer
than ``liveness_window_s``. One Lua script per silent worker checks the silence again, removes the worker, releases
its leases, counts a death for each piece it held and moves its tasks into ``tinct:requeue``, all atomically, so
exactly one of the racing reapers gets them. Publishing from ``tinct:requeue`` happens after, at least once: each
entry's outcome is recorded before its task is published, and a drainer killed in between leaves the entry to
another, which publishes the task only if nothing shows it went out (a task published twice anyway finds its piece
done or leased and returns). A worker that was only paused and comes back finds its lease gone; :class:`Lease`
checks before a result is uploaded and again, atomically, when it is recorded, so the late result is discarded and
the job's join and completion happen once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import metrics
from worker.errors import one_line
from worker.jobs import FINISHED, KEY_PREFIX, JobStore, job_key
from worker.settings import Settings

logger = logging.getLogger(__name__)

WORKERS_KEY = f"{KEY_PREFIX}workers"
REQUEUE_KEY = f"{KEY_PREFIX}requeue"
# kombu's Redis transport: delivered, unacknowledged messages and their delivery times (see worker.top).
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"
EVENTS_KEPT = 50  # re-queue events kept per job for ``tinct status``
# How long a delivered message may be out of both its queue and kombu's unacked hash: the transport pops it, then
# records it as unacked, in two steps (see Heartbeat._published).
_MESSAGE_IN_TRANSIT_S = 0.5

Publish = Callable[[str, list, str, str], str]  # task name, arguments, queue, the id to give it -> its id


def process_id() -> str:
    """This process's worker id: unique per host and process, stable for the process's life."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_key(worker: str, suffix: str = "") -> str:
    return f"{KEY_PREFIX}worker:{worker}{suffix}"


def lease_key(job_id: str, piece: str) -> str:
    return job_key(job_id, f":lease:{piece}")


# --- Lua: each runs atomically in Redis ---------------------------------------------------------------------

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# KEYS: workers, worker hash, held, leases, reaped marker. ARGV: worker id, node, n, n held fields released since
# the last beat, then the held field/value pairs. Returns {reaped (0/1), now}. A worker that was reaped while it was
# silent learns it here, and does not write its stale held pieces back: they are already on their way to others.
_BEAT = _NOW + """
local reaped = redis.call('DEL', KEYS[5])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'node', ARGV[2], 'beat', tostring(now))
local released = tonumber(ARGV[3])
for i = 4, 3 + released do redis.call('HDEL', KEYS[3], ARGV[i]) end
if reaped == 0 then
  for i = 4 + released, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
return {reaped, tostring(now)}
"""

# KEYS: workers, requeue, worker hash, held, leases, reaped marker. ARGV: worker id, window (0: no silence check,
# a worker handing its own pieces back), reason, job key prefix. Returns {0} when the worker is not silent (or
# another reaper was first), else {1, the requeue entries made...}.
_REAP = _NOW + """
local worker = ARGV[1]
if tonumber(ARGV[2]) > 0 then
  local beat = redis.call('ZSCORE', KEYS[1], worker)
  if not beat or now - tonumber(beat) < tonumber(ARGV[2]) then return {0} end
  redis.call('SET', KEYS[6], '1', 'EX', 86400)
end
redis.call('ZREM', KEYS[1], worker)
for _, key in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local holder = redis.call('GET', key)
  if holder and string.sub(holder, 1, #worker + 1) == worker .. '|' then redis.call('DEL', key) end
end
local held = redis.call('HGETALL', KEYS[4])
local made = {1}
for i = 1, #held, 2 do
  local job, piece = string.match(held[i], '^[^|]*|([^|]*)|(.*)$')
  local deaths = 0
  if ARGV[3] == 'died' and job and job ~= '' then
    deaths = redis.call('HINCRBY', ARGV[4] .. job .. ':deaths', piece, 1)
  end
  local entry = deaths .. '|' .. ARGV[3] .. '|' .. tostring(now) .. '|' .. held[i + 1]
  redis.call('HSET', KEYS[2], worker .. '|' .. held[i], entry)
  table.insert(made, entry)
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
return made
"""

# KEYS: lease, workers, the taker's leases set. ARGV: token, window, ttl (ms), taker's worker id. Returns nil when
# taken, else the token of another worker still alive (it beat within the window); a dead or unknown holder's lease
# is taken over, and so is one this worker left behind (a step retried in place after Redis came back).
_TAKE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  local other = string.match(current, '^(.*)|')
  local beat = other and other ~= ARGV[4] and redis.call('ZSCORE', KEYS[2], other)
  if beat then
    """ + _NOW + """
    if now - tonumber(beat) < tonumber(ARGV[2]) then return current end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
return false
"""

# KEYS: lease, done set, job hash, parts hash, deaths hash, leases set. ARGV: token, piece, amount done, part name.
# Returns the number of pieces done, or -1 when the lease is no longer this holder's (the result is discarded). A
# job that has finished meanwhile (cancelled, failed) keeps the progress it had: its frames or files are not added.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[6], KEYS[1])
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return -1 end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[4]) end
local state = redis.call('HGET', KEYS[3], 'state')
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  redis.call('HINCRBYFLOAT', KEYS[3], 'done', ARGV[3])
end
redis.call('HDEL', KEYS[5], ARGV[2])
return redis.call('SCARD', KEYS[2])
"""

# KEYS: lease, job hash, leases set. ARGV: token, then field/value pairs. Writes them only while this holder has the
# lease and the job has not finished, and then gives the lease up; 1 if written.
_FENCED_UPDATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], KEYS[1])
return 1
"""

# KEYS: a queue's list. ARGV: a task id. Celery's Redis transport pushes on the left and takes from the right: a task
# just published is the leftmost; moved to the right end, it is the next one taken. Returns 1 if moved.
_TO_FRONT = """
local message = redis.call('LINDEX', KEYS[1], 0)
if message and string.find(message, ARGV[1], 1, true) then
  redis.call('LPOP', KEYS[1])
  redis.call('RPUSH', KEYS[1], message)
  return 1
end
return 0
"""

# KEYS: the task's queue, kombu's unacked hash, the re-queue hash, the job's done set, its deaths hash. ARGV: the task
# id, the piece, the piece's deaths when its re-queue was decided. Returns 1 if anything shows the task was published.
_WAS_PUBLISHED = """
if tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0') > tonumber(ARGV[3]) then return 1 end
if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1 then return 1 end
for _, message in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.find(message, ARGV[1], 1, true) then return 1 end
end
for _, message in ipairs(redis.call('HVALS', KEYS[2])) do
  if string.find(message, ARGV[1], 1, true) then return 1 end
end
for _, entry in ipairs(redis.call('HKEYS', KEYS[3])) do
  if string.find(entry, '|' .. ARGV[1] .. '|', 1, true) then return 1 end
end
return 0
"""

# KEYS: lease, leases set. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], KEYS[1])
return 1
"""


# --- leases ----------------------------------------------------------------------------------------------------


@dataclass
class Lease:
    """The right to record one piece's result (or to join, or to finish a job), held by one task of one worker."""

    leases: Leases
    job_id: str
    piece: str
    token: str
    spent: bool = False  # given up by a commit or a fenced update: nothing left to release

    @property
    def key(self) -> str:
        return lease_key(self.job_id, self.piece)

    def held(self) -> bool:
        """Still ours: checked before uploading a result, so a worker that was silent long enough for its piece to
        be handed to another uploads nothing."""
        return self.leases.redis.get(self.key) == self.token.encode()

    def commit(self, amount: float, part: str = "") -> int:
        """Record the piece done (and ``amount`` more frames or files, and its staged ``part`` file) if the lease is
        still ours: the number of pieces now done, or -1 if another worker has the piece (the result is discarded)."""
        keys = [self.key, job_key(self.job_id, ":done"), job_key(self.job_id),
                job_key(self.job_id, ":parts"), job_key(self.job_id, ":deaths"), self.leases.own_set]
        self.spent = True  # the script gives the lease up whatever it finds
        return int(self.leases._commit(keys=keys, args=[self.token, self.piece, amount, part]))

    def update_job(self, mapping: Mapping[str, str]) -> bool:
        """Write the job's fields (its final state) if the lease is still ours and the job has not finished."""
        pairs = [item for name_value in mapping.items() for item in name_value]
        keys = [self.key, job_key(self.job_id), self.leases.own_set]
        self.spent = bool(self.leases._fenced_update(keys=keys, args=[self.token, *pairs]))
        return self.spent

    def release(self) -> None:
        """Give the lease up (a no-op once a commit or a fenced update has: one Redis write saved per piece)."""
        if not self.spent:
            self.leases._release(keys=[self.key, self.leases.own_set], args=[self.token])
            self.spent = True


class Leases:
    """Piece leases for the tasks of this process (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.window_s = settings.liveness_window_s
        # A live holder cannot keep a task past the hard time limit; past that, a lease protects nothing.
        self.ttl_ms = int((settings.task_time_limit_s + settings.liveness_window_s) * 1000)
        self._take = client.register_script(_TAKE)
        self._commit = client.register_script(_COMMIT)
        self._fenced_update = client.register_script(_FENCED_UPDATE)
        self._release = client.register_script(_RELEASE)

    @property
    def worker(self) -> str:
        return process_id()  # read each time: a forked pool child is a worker of its own

    @property
    def own_set(self) -> str:
        return _worker_key(self.worker, ":leases")

    def take(self, job_id: str, piece: str) -> Lease | None:
        """The lease on ``piece``, or None while a live worker holds it (that worker will finish it, or die and
        have it re-queued)."""
        token = f"{self.worker}|{secrets.token_hex(6)}"
        busy = self._take(keys=[lease_key(job_id, piece), WORKERS_KEY, self.own_set],
                          args=[token, self.window_s, self.ttl_ms, self.worker])
        if busy is not None:
            logger.info("%s of job %s is being done by %s; leaving it to that worker", piece, job_id,
                        busy.decode().split("|", 1)[0])
            return None
        return Lease(self, job_id, piece, token)


# --- the heartbeat and the reaper ------------------------------------------------------------------------------


@dataclass
class _Held:
    task_id: str
    task: str
    args: list
    queue: str
    job_id: str
    piece: str
    node: str
    tag: str | None
    thread: int
    last_progress: float = field(default_factory=time.monotonic)
    lost: bool = False  # this worker was declared dead while holding it: another worker has the piece
    ended: bool = False  # its job was cancelled or failed while it ran: whatever the task makes is thrown away

    @property
    def field(self) -> str:
        return f"{self.task_id}|{self.job_id}|{self.piece}"

    def encode(self) -> str:
        return json.dumps({"task": self.task, "args": self.args, "queue": self.queue, "node": self.node,
                           "tag": self.tag, "idle_s": round(time.monotonic() - self.last_progress, 1)})


@dataclass
class _RequeueEntry:
    """One task taken from a silent or leaving worker, in ``tinct:requeue``: the field is ``<worker>|<task id>|<job
    id>|<piece>``, the value ``<deaths>|<reason>|<time>|<the held task's JSON>``, into which the drain writes what it
    decided (``outcome``; for a re-queue, the new task's id and the piece's deaths then)."""

    field: str
    task_id: str
    job_id: str
    piece: str
    deaths: int
    reason: str
    at: str
    record: dict[str, Any]

    @classmethod
    def parse(cls, entry_field: str, value: str) -> _RequeueEntry:
        deaths, reason, at, record = value.split("|", 3)
        _, task_id, job_id, piece = entry_field.split("|", 3)
        return cls(entry_field, task_id, job_id, piece, int(deaths), reason, at, json.loads(record))

    @property
    def decided(self) -> str | None:
        return self.record.get("outcome")

    @decided.setter
    def decided(self, outcome: str) -> None:
        self.record["outcome"] = outcome

    def encode(self) -> str:
        return f"{self.deaths}|{self.reason}|{self.at}|{json.dumps(self.record)}"


class Heartbeat:
    """The liveness component of one worker process: a daemon thread that beats, reaps silent workers and publishes
    their tasks again; :meth:`hold`/:meth:`release` record the tasks this process runs (Celery's task signals)."""

    def __init__(self, settings: Settings, client: redis.Redis, publish: Publish, node: str = "") -> None:
        self.settings = settings
        self.redis = client
        self.store = JobStore(client, settings.job_ttl_s)
        self.publish = publish
        self.worker = process_id()
        self.node = node or self.worker
        self.interval_s = settings.heartbeat_interval_s
        self.window_s = settings.liveness_window_s
        self._held: dict[str, _Held] = {}
        self._released: list[str] = []  # held fields to delete at the next beat
        self._lock = threading.Lock()
        # Beats from several threads (the heartbeat's, and a task's recording its piece) land in the order they took
        # their snapshot of what is held: one taken before a release must not land after the release's.
        self._beat_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a task started or ended: beat now, not at the next interval
        self._thread: threading.Thread | None = None
        self._healthy_since: float | None = None  # monotonic time of the first beat after start or an outage
        self._outage_seen = False  # a beat of this process has failed since it started
        self._beat = client.register_script(_BEAT)
        self._reap = client.register_script(_REAP)
        self._to_front = client.register_script(_TO_FRONT)
        self._was_published = client.register_script(_WAS_PUBLISHED)

    def _keys(self) -> list[str]:
        return [WORKERS_KEY, _worker_key(self.worker), _worker_key(self.worker, ":held"),
                _worker_key(self.worker, ":leases"), _worker_key(self.worker, ":reaped")]

    # the thread

    def start(self) -> None:
        """Beat once now (so the process is known before it takes a task), then every interval in a thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="tinct-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Tick every interval; in between, a task starting or ending is written at once by an extra beat (off the
        task's own thread, so recording a piece costs the task no Redis round trip)."""
        next_tick = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            woken = self._wake.wait(max(0.0, next_tick - time.monotonic()))
            if self._stop.is_set():
                return
            if time.monotonic() >= next_tick:
                self._wake.clear()
                self.tick()
                next_tick = time.monotonic() + self.interval_s
            elif woken:
                self._wake.clear()
                try:
                    self.beat()
                except redis.RedisError:
                    pass  # the next tick says so, and writes it again

    def tick(self) -> None:
        """One beat, then (when healthy for a window) a look for silent workers, then publishing re-queued tasks."""
        try:
            now = self.beat()
            if self._healthy_since is None:
                self._healthy_since = time.monotonic()
            # A worker silent for the window is dead, unless Redis itself was away (every beat looks old after an
            # outage): so reap once this process has beaten through a whole window, or, in a process that has seen
            # no outage since it started (a replacement, when workers die faster than a window), once Redis has
            # been up for a window.
            if time.monotonic() - self._healthy_since >= self.window_s or (
                    not self._outage_seen and self._redis_uptime_s() >= self.window_s):
                self.reap_silent(now)
            self.drain()
            self.note_ended_jobs()
        except redis.RedisError as exc:
            self._outage_seen = True
            if self._healthy_since is not None:
                logger.warning("heartbeat: Redis unavailable (%s); pieces are recovered once it is back", one_line(exc))
            self._healthy_since = None
        except Exception:  # noqa: BLE001 - the liveness thread must outlive any one bad round
            logger.exception("heartbeat round failed")

    def beat(self) -> float:
        with self._beat_lock:
            with self._lock:
                held = [h for h in self._held.values() if not h.lost]
                pairs = [item for h in held for item in (h.field, h.encode())]
                released, self._released = self._released, []
            try:
                reaped, now = self._beat(keys=self._keys(),
                                         args=[self.worker, self.node, len(released), *released, *pairs])
            except BaseException:
                with self._lock:
                    self._released = released + self._released
                raise
        if reaped:
            with self._lock:
                for h in held:
                    h.lost = True
            for h in held:
                logger.warning("this worker was silent for longer than %.0f s: %s of job %s was handed to another "
                               "worker, and this worker's result for it will be discarded", self.window_s, h.piece,
                               h.job_id)
        return float(now)

    def _redis_uptime_s(self) -> float:
        return float(self.redis.info("server").get("uptime_in_seconds", 0))

    def reap_silent(self, now: float) -> list[str]:
        """Take the tasks of every worker silent for longer than the window; the worker ids reaped."""
        reaped = []
        for raw in self.redis.zrangebyscore(WORKERS_KEY, "-inf", now - self.window_s):
            worker = raw.decode()
            if worker == self.worker:
                continue
            entries = self._take_tasks(worker, self.window_s, "died")
            if entries is None:
                continue  # another reaper was first, or it beat again
            reaped.append(worker)
            logger.warning("worker %s silent for over %.0f s: %d task(s) to re-queue", worker, self.window_s,
                           len(entries))
        return reaped

    def _take_tasks(self, worker: str, window: float, reason: str) -> list[bytes] | None:
        keys = [WORKERS_KEY, REQUEUE_KEY, _worker_key(worker), _worker_key(worker, ":held"),
                _worker_key(worker, ":leases"), _worker_key(worker, ":reaped")]
        taken, *entries = self._reap(keys=keys, args=[worker, window, reason, f"{KEY_PREFIX}job:"])
        return list(entries) if taken else None

    def drain(self) -> int:
        """Carry out every entry waiting in ``tinct:requeue``: publish its task again at the front of its queue, or
        fail the job of a poison piece, or drop it when its job has ended; the number carried out.

        Each entry goes in two steps. First the outcome is decided and recorded (the job's event, and the outcome
        written into the entry) in one transaction; then it is carried out and the entry deleted. The event comes
        first so that the job's events read in the order things happened even when this process is killed in
        between (a worker that drains a piece and then takes it itself is what the poison-piece test kills); the
        outcome kept in the entry lets the process that finishes an interrupted entry, after its claim expires,
        carry out the same outcome without a second event, and publish the task only if it was not published."""
        done = 0
        for raw_field, raw_entry in self.redis.hgetall(REQUEUE_KEY).items():
            entry_field = raw_field.decode()
            if not self._claim(entry_field):
                continue  # another process is carrying it out, or has done so since we read the hash
            entry = _RequeueEntry.parse(entry_field, raw_entry.decode())
            interrupted = entry.decided is not None
            if not interrupted:
                self._decide(entry)
            self._carry_out(entry, interrupted)
            done += 1
        return done

    def _decide(self, entry: _RequeueEntry) -> None:
        """Decide what becomes of a re-queue entry and record it: the job's event and the entry's outcome, with the
        lost message's unacked copy, in one transaction."""
        state = self.store.state(entry.job_id) if entry.job_id else None
        if state in FINISHED:
            entry.decided = "dropped"  # the job ended meanwhile: nothing to redo
        elif entry.deaths >= self.settings.max_piece_deaths:
            entry.decided = "failed"
        else:
            entry.decided = "requeued"
            entry.record["requeued_as"] = str(uuid.uuid4())
            # A death counted after this one means the task was published and ran again (see _published).
            entry.record["deaths_then"] = int(self.redis.hget(job_key(entry.job_id, ":deaths"), entry.piece)
                                              or 0)
        event = json.dumps({"piece": entry.piece, "worker": entry.record["node"], "reason": entry.reason,
                            "deaths": entry.deaths, "outcome": entry.decided, "at": float(entry.at),
                            "idle_s": entry.record.get("idle_s", 0.0)})
        with self.redis.pipeline() as pipe:
            pipe.hset(REQUEUE_KEY, entry.field, entry.encode())
            if entry.record.get("tag"):  # the broker would deliver the lost message again after its timeout
                pipe.hdel(UNACKED_KEY, entry.record["tag"])
                pipe.zrem(UNACKED_INDEX_KEY, entry.record["tag"])
            if entry.job_id:
                events = job_key(entry.job_id, ":requeued")
                pipe.lpush(events, event)
                pipe.ltrim(events, 0, EVENTS_KEPT - 1)
                pipe.expire(events, self.settings.job_ttl_s)
            pipe.execute()
        if entry.decided == "requeued":
            metrics.REQUEUED.labels(entry.reason).inc()
        logger.warning("%s of job %s (task %s, held by %s, %s): %s", entry.piece, entry.job_id, entry.task_id,
                       entry.record["node"], entry.reason,
                       entry.decided if entry.decided != "failed" else f"failed the job after {entry.deaths} deaths")

    def _carry_out(self, entry: _RequeueEntry, interrupted: bool) -> None:
        """Do what was decided for ``entry`` and delete it. Finishing an entry another process left half done
        (``interrupted``), a task it may have published already is published only if nothing shows it was."""
        if entry.decided == "failed":
            if self.store.update_unless_finished(
                    entry.job_id, state="failed",
                    error=one_line(f"{entry.piece} was being done by a worker that died {entry.deaths} times in a row "
                                   f"(last {entry.record['node']}); failed instead of killing more workers "
                                   "(TINCT_MAX_PIECE_DEATHS)")):
                metrics.JOBS.labels("failed").inc()
        elif entry.decided == "requeued":
            task_id = entry.record["requeued_as"]
            if not interrupted:
                self._publish_to_front(entry.record, task_id)
            elif entry.job_id and self.store.state(entry.job_id) in FINISHED:
                logger.info("re-queued %s of job %s: the job has ended; not published again", entry.piece,
                            entry.job_id)
            elif self._published(entry):
                logger.info("re-queued %s of job %s: its task %s was published before its publisher stopped",
                            entry.piece, entry.job_id, task_id)
            else:
                self._publish_to_front(entry.record, task_id)
                logger.warning("re-queued %s of job %s: its publisher stopped before publishing task %s; published "
                               "now", entry.piece, entry.job_id, task_id)
        self.redis.hdel(REQUEUE_KEY, entry.field)

    def _publish_to_front(self, record: dict[str, Any], task_id: str) -> None:
        self.publish(record["task"], record["args"], record["queue"], task_id)
        # At the front of its queue, not behind everything submitted since: the piece was being worked on.
        self._to_front(keys=[record["queue"]], args=[task_id])

    def _published(self, entry: _RequeueEntry) -> bool:
        """Whether the task of a decided re-queue entry is out: waiting on its queue, delivered to a worker (kombu
        keeps it unacked until the task ends), done, in a re-queue entry of its own, or dead since (a later death
        of its piece). Looked at twice a moment apart: a message is in neither the queue nor the unacked hash while
        a worker's transport moves it from one to the other."""
        keys = [entry.record["queue"], UNACKED_KEY, REQUEUE_KEY, job_key(entry.job_id, ":done"),
                job_key(entry.job_id, ":deaths")]
        args = [entry.record["requeued_as"], entry.piece, entry.record.get("deaths_then", 0)]
        for attempt in range(2):
            if attempt:
                time.sleep(_MESSAGE_IN_TRANSIT_S)
            if self._was_published(keys=keys, args=args):
                return True
        return False

    def _claim(self, entry_field: str) -> bool:
        """Whether this process may carry out the re-queue entry ``entry_field``: every heartbeat drains the same
        hash, and two that read it at once would each publish the task and record the death twice. The claim is
        never released, only left to expire (an entry's field names one death of one task, so it never comes back):
        a drainer that dies before it deletes the entry leaves it for another after the expiry, which finishes what
        the entry says was decided, so publishing stays at least once."""
        claim = f"{REQUEUE_KEY}:claim:{entry_field}"
        if not self.redis.set(claim, self.worker, nx=True, px=int(self.window_s * 1000)):
            return False
        return bool(self.redis.hexists(REQUEUE_KEY, entry_field))  # published by a claim that has since expired

    # what this process holds

    def hold(self, task_id: str, task: str, args: list, queue: str, job_id: str, piece: str, node: str,
             tag: str | None) -> None:
        self.node = node or self.node  # the Celery node name, known for sure once a task runs
        held = _Held(task_id, task, list(args), queue, job_id, piece, node, tag, threading.get_ident())
        with self._lock:
            self._held[task_id] = held
        # Recorded before the task does anything, from its own thread: a worker killed a moment later must leave the
        # piece behind for the others to re-queue. Left to the heartbeat thread alone ("within milliseconds"), on a
        # loaded node a SIGKILL in between lost a film segment until the broker's visibility timeout, an hour.
        if not self._stop.is_set():  # a worker that has left must not be listed again
            try:
                self.beat()
            except redis.RedisError:
                pass  # Redis away: the heartbeat thread writes it once it is back
        self._wake.set()

    def release(self, task_id: str) -> None:
        with self._lock:
            held = self._held.pop(task_id, None)
            if held is not None:
                self._released.append(held.field)
        self._wake.set()

    def progress(self, thread: int | None = None) -> None:
        """The task running in ``thread`` (the calling thread by default) made progress (a frame, a photo, a model
        loaded): not stalled."""
        now, thread = time.monotonic(), threading.get_ident() if thread is None else thread
        for held in list(self._held.values()):
            if held.thread == thread:
                held.last_progress = now

    def handed_over(self, thread: int) -> bool:
        """Whether a piece held by the task running in ``thread`` went to another worker while this one was silent:
        known from the first beat after the silence, with no round trip to Redis."""
        with self._lock:
            return any(h.lost for h in self._held.values() if h.thread == thread)

    def note_ended_jobs(self) -> None:
        """Mark the held pieces whose job was cancelled or failed since they started (one round trip a beat, only
        while holding), so that their tasks stop at the next frame instead of finishing work that is thrown away."""
        with self._lock:
            held = [h for h in self._held.values() if not h.lost and not h.ended and h.job_id]
        if not held:
            return
        states = self.store.states([h.job_id for h in held])
        with self._lock:
            for h, state in zip(held, states, strict=True):
                h.ended = state in FINISHED

    def job_ended(self, thread: int) -> bool:
        """Whether the job of a piece held by the task running in ``thread`` has finished (known from the last beat)."""
        with self._lock:
            return any(h.ended for h in self._held.values() if h.thread == thread)

    def holding(self) -> bool:
        with self._lock:
            return any(not h.lost for h in self._held.values())

    def hand_back(self) -> int:
        """Give every task this process holds to the other workers now (a SIGTERM whose grace ran out): no death is
        counted, and no one waits for a liveness window. The number of tasks handed back."""
        entries = self._take_tasks(self.worker, 0, "handed back") or []
        with self._lock:
            for held in self._held.values():
                held.lost = True
        self.drain()
        return len(entries)

    def stop_beating(self, timeout_s: float = 5.0) -> None:
        """Stop the beating thread, waiting out a beat it is in the middle of: a beat that lands after this worker
        handed its pieces back would put it in the set of workers again, to be reaped as dead a window later."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def stop(self) -> None:
        """Leave the set of workers (a clean shutdown): anything still held is handed back."""
        self.stop_beating()
        try:
            self.hand_back()
        except redis.RedisError as exc:
            logger.warning("could not leave the worker set cleanly (%s): others will notice the silence",
                           one_line(exc))


# --- the process's one heartbeat (for the task signals and the pipeline's progress calls) ------------------------

_current: Heartbeat | None = None
_current_pid = 0


def start(settings: Settings, client: redis.Redis, publish: Publish, node: str = "") -> Heartbeat:
    """Start this process's heartbeat once (again in a forked child, whose parent's thread did not survive the
    fork)."""
    global _current, _current_pid
    if _current is None or _current_pid != os.getpid():
        _current, _current_pid = Heartbeat(settings, client, publish, node), os.getpid()
        _current.start()
        logger.info("liveness: %s beats every %.0f s; silent workers are recovered after %.0f s", _current.worker,
                    settings.heartbeat_interval_s, settings.liveness_window_s)
    return _current


def current() -> Heartbeat | None:
    return _current if _current_pid == os.getpid() else None


def progress() -> None:
    """Mark progress of the calling task (cheap: no I/O; the next beat carries it to Redis)."""
    heartbeat = current()
    if heartbeat is not None:
        heartbeat.progress()


class HandedOver(Exception):
    """The task's piece went to another worker while this one was silent: whatever it was making is discarded."""


class JobEnded(Exception):
    """The task's job was cancelled or failed while the task ran: whatever it was making is discarded."""


@dataclass(frozen=True)
class TaskLiveness:
    """One task's liveness, for the threads it starts: a film segment's pipeline stages run in threads of their own,
    so a frame written there must count as the task's progress, and a worker resumed after a long pause (SIGSTOP, a
    frozen VM) must stop its stale segment at the next frame instead of finishing work another worker is redoing;
    so must a segment whose job was cancelled or failed meanwhile, instead of finishing work that is thrown away."""

    heartbeat: Heartbeat | None
    thread: int

    def progress(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.progress(self.thread)

    def job_ended(self) -> bool:
        """Whether the task's job was cancelled or failed while it ran (known from the last beat, no round trip)."""
        return self.heartbeat is not None and self.heartbeat.job_ended(self.thread)

    def check_held(self) -> None:
        """Raise HandedOver once the task's piece belongs to another worker, JobEnded once its job has finished."""
        if self.heartbeat is not None and self.heartbeat.handed_over(self.thread):
            raise HandedOver
        if self.job_ended():
            raise JobEnded


def this_task() -> TaskLiveness:
    """The calling task's liveness, to hand to the threads it starts."""
    return TaskLiveness(current(), threading.get_ident())


def grace_then_hand_back(grace_s: float, exit_code: int = 0) -> threading.Thread | None:
    """After a SIGTERM: give the pieces in hand ``grace_s`` to finish; if any is still running then, hand it back and
    end the process at once, so that the orchestrator's kill finds nothing to lose."""
    heartbeat = current()
    if heartbeat is None:
        return None

    def wait() -> None:
        deadline = time.monotonic() + grace_s
        while heartbeat.holding() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not heartbeat.holding():
            return
        try:
            heartbeat.stop_beating()
            heartbeat.beat()  # what it holds is in Redis, for the hand-back to take
            count = heartbeat.hand_back()
            logger.warning("stop requested %.0f s ago and the piece in hand is not finished: %d task(s) handed back "
                           "to the other workers", grace_s, count)
        except Exception:  # noqa: BLE001 - still exit: the liveness window recovers what was not handed back
            logger.exception("handing back on stop failed; other workers recover the pieces after the liveness window")
        logging.shutdown()
        os._exit(exit_code)

    thread = threading.Thread(target=wait, name="tinct-stop-grace", daemon=True)
    thread.start()
    return thread


# --- what status, top and the metrics show -----------------------------------------------------------------------


@dataclass(frozen=True)
class HeldPiece:
    """A piece a worker holds, as Redis says: stalled when its worker is silent, or it made no progress, for longer
    than the liveness window."""

    worker: str
    node: str
    task: str
    job_id: str
    piece: str
    silent_s: float  # since the worker's last heartbeat
    idle_s: float  # since the piece last made progress
    stalled: bool

    @property
    def since(self) -> float:
        """Wall time (this machine's clock) of the piece's last progress."""
        return time.time() - self.idle_s


def held_pieces(client: redis.Redis, window_s: float, job_id: str | None = None) -> list[HeldPiece]:
    """Every piece held by a worker (only ``job_id``'s when given), with its stall state."""
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    workers = [(raw.decode(), beat) for raw, beat in client.zrange(WORKERS_KEY, 0, -1, withscores=True)]
    with client.pipeline(transaction=False) as pipe:
        for worker, _ in workers:
            pipe.hgetall(_worker_key(worker, ":held"))
        helds = pipe.execute()
    pieces = []
    for (worker, beat), held in zip(workers, helds, strict=True):
        silent = max(0.0, now - beat)
        for raw_field, raw_value in held.items():
            _, job, piece = raw_field.decode().split("|", 2)
            if job_id is not None and job != job_id:
                continue
            record = json.loads(raw_value)
            idle = float(record.get("idle_s", 0.0)) + silent
            pieces.append(HeldPiece(worker, record.get("node", worker), record.get("task", ""), job, piece,
                                    round(silent, 1), round(idle, 1), silent > window_s or idle > window_s))
    return sorted(pieces, key=lambda p: (p.job_id, p.piece))


def requeue_events(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The job's recent re-queues, newest first."""
    return [json.loads(raw) for raw in client.lrange(job_key(job_id, ":requeued"), 0, EVENTS_KEPT - 1)]


def describe_piece(piece: HeldPiece) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(piece.since))
    if piece.stalled:
        why = f"worker silent for {piece.silent_s:.0f} s" if piece.silent_s > piece.idle_s - piece.silent_s else \
            f"no progress for {piece.idle_s:.0f} s"
        return f"{piece.piece}: stalled on {piece.node} since {stamp} ({why})"
    return f"{piece.piece}: running on {piece.node}"


class StalledCollector(Collector):
    """``tinct_pieces_stalled``: pieces held by a silent worker, or making no progress, across the whole service
    (every worker exports the same figure: alert on the max)."""

    def __init__(self, client: redis.Redis, window_s: float) -> None:
        self.redis = client
        self.window_s = window_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tinct_pieces_stalled",
                                   "Pieces whose worker is silent, or that made no progress, for over the liveness "
                                   "window (service-wide)")
        try:
            family.add_metric([], sum(p.stalled for p in held_pieces(self.redis, self.window_s)))
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis blinked
            logger.debug("stalled pieces unavailable")
            return
        yield family
