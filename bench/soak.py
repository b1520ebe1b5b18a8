"""Soak: many short jobs on a few nodes while one node after another is killed with SIGKILL.

A farm of its own (embedded Redis, SQLite and folder storage under a temp data dir) runs ``--nodes``
``farm-node`` processes with short recovery timing (``--lock-seconds``, ``--stalled-interval-seconds``).
``--jobs`` copies of a short clip (3 s, 640x360, to 360p mp4) are submitted while, every
``--kill-every`` seconds (jittered), a node that is running a job is killed with SIGKILL together
with its FFmpeg's process group (what a reboot does to both), and started again under the same name.
Killing stops when no more jobs than nodes are left, and no job is killed more than
``--max-deaths-per-job`` times, below the nodes' ``--max-stalled`` limit (a job past it fails for
good: tests/e2e/test_node_death.py covers that).

Measured, for each job a kill cut short: the recovery time, from the kill to the job's next start
on a node (BullMQ's ``processedOn`` of the new run minus the kill's wall-clock time); the jobs a
killed node held are read right after the kill (rows active on it since it started, and jobs
active in BullMQ whose row is not, which any node may hold and which count only if they start
again). Counted: jobs, kills, runs per job (BullMQ's ``attemptsStarted``, checked against the
nodes' "run N starting" log lines), runs cut short (BullMQ's ``stalledCounter``), and duplicate
results discarded (a late run losing the conditional update).
Checked at the end: every row ``completed`` exactly once with exactly one object under
``outputs/<job id>/`` (the one it refers to), no row left ``active``, no FFmpeg left running, every
work dir empty once the nodes stopped.

    python bench/soak.py [--jobs 100] [--nodes 3] [--kill-every 2] [--out bench/results/soak.json]

``run_soak()`` is also what ``tests/e2e/test_soak.py`` runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

RUN_LINE = re.compile(r"job (\S+): run (\d+) starting")
# A run that lost its lock: stopped as it woke, or (past the check) beaten to the row.
LOST_LINE = re.compile(
    r"job (\S+?)(?::? run \d+ lost its lock to another run| was finished by another run; "
    r"deleting this run's output)"
)
RECONCILED_LINE = re.compile(r"reconciled job \S+: (\w+)")
ORPHAN_LINE = re.compile(r"killed (\d+) FFmpeg process\(es\) left running")


@dataclass
class SoakOptions:
    jobs: int = 100
    nodes: int = 3
    kill_every: float = 2.0
    lock_seconds: float = 5.0
    stalled_interval_seconds: float = 3.0
    reconcile_interval_seconds: float = 3.0
    max_stalled: int = 3
    max_deaths_per_job: int = 2
    timeout: float = 600.0
    seed: int = 1
    # Short enough for 100 jobs in about a minute on 2 cores, long enough that most kills land
    # while FFmpeg runs (with 0.5 s clips most landed between the steps around it).
    clip_seconds: float = 3.0
    clip_size: tuple[int, int] = (640, 360)


@dataclass
class Kill:
    at: float  # wall clock
    node: str
    jobs: dict[str, int]  # job id -> BullMQ attemptsStarted when the node was killed
    ffmpeg: int  # FFmpeg processes killed with it
    recovered: dict[str, float] = field(default_factory=dict)  # job id -> seconds to its next start


class Node:
    """One ``farm-node`` process; restarted under the same name, its log appended to."""

    def __init__(self, name: str, data_dir: Path, args: list[str]):
        self.name, self.args = name, args
        self.work_dir = data_dir / "work" / name
        self.log = data_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0  # wall clock

    def start(self) -> None:
        self.started_at = time.time()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "farm_node",
                    "--name",
                    self.name,
                    "--metrics-host",
                    "127.0.0.1",
                    "--metrics-port",
                    "0",
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ffmpeg(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "ffmpeg" in (c.name() or "")]

    def kill_like_a_reboot(self) -> int:
        ffmpeg = self.ffmpeg()  # found first: once the node is dead they are init's children
        self.proc.kill()
        for proc in ffmpeg:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        return len(ffmpeg)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # the second: hand the jobs back, stop now
                try:
                    return self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        return self.proc.wait()


def make_clip(path: Path, seconds: float, size: tuple[int, int]) -> Path:
    from farm.domain.media import find_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size[0]}x{size[1]}:rate=25:duration={seconds}",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(path),
        ],
        check=True,
    )
    return path


def run_soak(opts: SoakOptions, log=print) -> dict:
    """Run the soak on the farm that ``ENCODEFLOW_*`` (an isolated data dir) describes."""
    return Soak(opts, log).run()


class Soak:
    def __init__(self, opts: SoakOptions, log=print):
        from bullmq.queue_keys import QueueKeys

        from farm.base.settings import Settings
        from farm.client import Farm
        from farm.services.storage import open_storage

        self.opts, self.log = opts, log
        self.rng = random.Random(opts.seed)
        self.settings = Settings.load()
        self.farm = Farm(self.settings, start_embedded=False)
        self.storage = open_storage(self.settings.effective_storage_url)
        self.bull = QueueKeys().getKeys(self.settings.queue)  # BullMQ's key layout for our queue
        node_args = [
            "--lock-seconds",
            str(opts.lock_seconds),
            "--stalled-interval-seconds",
            str(opts.stalled_interval_seconds),
            "--reconcile-interval-seconds",
            str(opts.reconcile_interval_seconds),
            "--max-stalled",
            str(opts.max_stalled),
        ]
        self.nodes = [Node(f"soak-{i + 1}", self.settings.data_dir, node_args) for i in range(opts.nodes)]
        self.kills: list[Kill] = []
        self.deaths: Counter = Counter()  # job id -> times a node running it was killed
        self.runs_cut: set[tuple[str, int]] = set()  # (job id, attemptsStarted) of runs killed
        self.job_ids: list[str] = []
        self.submit_error: list[BaseException] = []

    def run(self) -> dict:
        from farm.services.embedded import ensure_embedded_redis
        from farm.services.registry import NodeRegistry

        server = ensure_embedded_redis(self.settings) if self.settings.uses_embedded_redis else None
        self.redis_url = self.settings.redis_url or server.url
        self.r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.registry = NodeRegistry(self.r, self.settings.queue)
        clip = make_clip(self.settings.data_dir.parent / "soak-clip.mp4", self.opts.clip_seconds, self.opts.clip_size)
        try:
            try:
                seconds = self._drive(clip)
            finally:
                stop_codes = {node.name: node.stop() for node in self.nodes}
            return self._verify(seconds, stop_codes)
        finally:
            self.r.close()
            self.farm.close()
            if server is not None and server.started_here:
                server.stop()

    # -- driving ---------------------------------------------------------------------------------
    def _drive(self, clip: Path) -> float:
        """Start the nodes, submit the jobs, kill and restart nodes until every job is settled."""
        from farm.services.db import repo

        opts = self.opts
        started = time.monotonic()
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self._wait_registered(node)
        self.log(f"soak: {opts.nodes} nodes up in {time.monotonic() - started:.1f} s; submitting {opts.jobs} jobs")
        submitter = threading.Thread(target=self._submit, args=(clip,), name="submit", daemon=True)
        submitter.start()
        next_kill = time.monotonic() + opts.kill_every * self.rng.uniform(0.5, 1.5)
        deadline = time.monotonic() + opts.timeout
        while True:
            if self.submit_error:
                raise RuntimeError(f"submitting failed: {self.submit_error[0]}")
            counts = repo.count_by_status(self.farm.db)
            done = counts["completed"] + counts["failed"] + counts["cancelled"]
            if not submitter.is_alive() and done >= opts.jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"soak timed out after {opts.timeout:.0f} s: {counts}")
            self._note_recoveries()
            # Killing stops for the last few jobs: with more kills than jobs in flight, the same
            # job would be caught again and again.
            if time.monotonic() >= next_kill and opts.jobs - done > opts.nodes and self._kill_one():
                next_kill = time.monotonic() + opts.kill_every * self.rng.uniform(0.5, 1.5)
            time.sleep(0.1)
        seconds = time.monotonic() - started
        self.log(f"soak: {opts.jobs} jobs settled in {seconds:.1f} s with {len(self.kills)} kills; checking")
        # Late recoveries, and the reconcile passes that sweep outputs of runs that lost.
        settle_deadline = time.monotonic() + max(
            30.0, 4 * opts.reconcile_interval_seconds, 3 * (opts.lock_seconds + opts.stalled_interval_seconds)
        )
        while time.monotonic() < settle_deadline:
            self._note_recoveries()
            # The queue settles after the rows: a node killed between finishing a row and telling
            # BullMQ leaves the job active until its lock expires and a rerun completes it.
            queue_settled = all(self.r.hget(self.bull[""] + j, "finishedOn") for j in self.job_ids)
            if queue_settled and all(len(self._outputs(j)) == 1 for j in self.job_ids):
                break
            time.sleep(0.5)
        return seconds

    def _submit(self, clip: Path) -> None:
        from farm.client import Farm
        from farm.domain.jobspec import OutputConfig

        submitter = Farm(self.settings, start_embedded=False)
        try:
            config = OutputConfig(resolution="360p", format="mp4")
            for _ in range(self.opts.jobs):
                self.job_ids.append(submitter.submit([clip], config)[0].id)
        except BaseException as exc:  # reported by the main loop
            self.submit_error.append(exc)
        finally:
            submitter.close()

    def _kill_one(self) -> bool:
        """Kill a node that runs a job (one not killed too often already) and start it again."""
        candidates = []
        for node in self.nodes:
            if node.proc.poll() is None and self._registered(node):
                jobs = self._active_jobs_of(node.name)
                if jobs and all(self.deaths[j] < self.opts.max_deaths_per_job for j in jobs):
                    candidates.append(node)
        if not candidates:
            return False
        node = self.rng.choice(candidates)
        at = time.time()
        ffmpeg = node.kill_like_a_reboot()
        jobs = self._active_jobs_of(node.name)  # after the kill: the dead process changes nothing
        # A run an earlier kill already cut short (same job, same start count) is not this kill's.
        jobs = {j: ats for j, ats in jobs.items() if (j, ats) not in self.runs_cut}
        self.runs_cut.update(jobs.items())
        self.deaths.update(jobs)
        self.kills.append(Kill(at, node.name, jobs, ffmpeg))
        node.start()
        return True

    def _registered(self, node: Node) -> bool:
        status = self.registry.node(node.name)
        return bool(status and status.online and status.pid == node.proc.pid)

    def _wait_registered(self, node: Node, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._registered(node):
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not come up; see {node.log}")
            time.sleep(0.05)

    def _active_jobs_of(self, name: str) -> dict[str, int]:
        """Jobs ``name`` may hold -> their BullMQ attemptsStarted; read after a kill, it is exact.

        The rows tell: those active on ``name`` since this process started (a row its dead
        predecessor left is not its job). Python BullMQ workers do not record ``processedBy`` in
        the queue, so a job active in BullMQ whose row is not (taken but not yet marked, or settled
        but not yet reported) may be any node's: it is included, and counted as cut short only if
        it starts again after the kill.
        """
        from farm.services.db import repo

        node = next(n for n in self.nodes if n.name == name)
        out = {}
        for job, _ in repo.list_jobs(self.farm.db, status="active", limit=1000):
            if job.node == name and job.started_at and job.started_at.timestamp() >= node.started_at:
                out[job.id] = int(self.r.hget(self.bull[""] + job.id, "ats") or 0)
        for job_id in self.r.lrange(self.bull["active"], 0, -1):
            job = repo.get_job(self.farm.db, job_id)
            if job is not None and job.status != "active":
                out[job_id] = int(self.r.hget(self.bull[""] + job_id, "ats") or 0)
        return out

    def _note_recoveries(self) -> None:
        """A killed job recovered when it started again: BullMQ's processedOn of that new run."""
        for kill in self.kills:
            for job_id, ats in kill.jobs.items():
                if job_id in kill.recovered:
                    continue
                now_ats, processed_on = self.r.hmget(self.bull[""] + job_id, "ats", "processedOn")
                if now_ats is not None and int(now_ats) > ats and processed_on:
                    kill.recovered[job_id] = round(int(processed_on) / 1000 - kill.at, 3)

    def _outputs(self, job_id: str) -> list[str]:
        from farm.domain.object_keys import output_prefix

        return [o.key for o in self.storage.list(output_prefix(job_id))]

    # -- checking --------------------------------------------------------------------------------
    def _verify(self, seconds: float, stop_codes: dict) -> dict:
        from farm.services.storage.base import INTERNAL_PREFIX

        job_ids, kills, nodes, bull, r = self.job_ids, self.kills, self.nodes, self.bull, self.r
        rows = {job_id: self.farm.show(job_id).to_json() for job_id in job_ids}
        outputs = {j: self._outputs(j) for j in job_ids}
        wrong_outputs = {
            j: keys for j, keys in outputs.items() if not rows[j].get("output") or keys != [rows[j]["output"]["key"]]
        }
        root = getattr(self.storage, "root", None)
        temp_files = [str(p.relative_to(root)) for p in Path(root).rglob(f"{INTERNAL_PREFIX}*")] if root else []
        runs_in_logs: Counter = Counter()
        lost: Counter = Counter()
        reconciled: Counter = Counter()
        orphans = 0
        for node in nodes:
            text = node.log.read_text(errors="replace")
            runs_in_logs.update(m.group(1) for m in RUN_LINE.finditer(text))
            lost.update(m.group(1) for m in LOST_LINE.finditer(text))
            reconciled.update(m.group(1) for m in RECONCILED_LINE.finditer(text))
            orphans += sum(int(m.group(1)) for m in ORPHAN_LINE.finditer(text))
        started_in_queue = {j: int(r.hget(bull[""] + j, "ats") or 0) for j in job_ids}
        stalled_in_queue = {j: int(r.hget(bull[""] + j, "stc") or 0) for j in job_ids}
        queue_states = Counter(
            "completed"
            if r.zscore(bull["completed"], j) is not None
            else "failed"
            if r.zscore(bull["failed"], j) is not None
            else "other"
            for j in job_ids
        )
        data_dir = str(self.settings.data_dir)
        ffmpeg_left = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                if "ffmpeg" in (proc.info["name"] or "") and any(data_dir in a for a in proc.info["cmdline"] or []):
                    ffmpeg_left.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        from farm_node.workdir import entries  # what a work dir holds besides the node's marker

        work_left = {n.name: [p.name for p in entries(n.work_dir)] for n in nodes if entries(n.work_dir)}
        recoveries = [s for k in kills for s in k.recovered.values()]
        # A caught job that never started again but finished had finished in the instant before the
        # kill landed (its run had settled the row and was telling BullMQ); one that did neither is stuck.
        unrecovered = [
            job_id
            for kill in kills
            for job_id in kill.jobs
            if job_id not in kill.recovered and not r.hget(bull[""] + job_id, "finishedOn")
        ]
        failed_reasons = Counter(
            r.hget(bull[""] + j, "failedReason") for j in job_ids if r.zscore(bull["failed"], j) is not None
        )
        total_runs = sum(started_in_queue.values())
        return {
            "options": dict(vars(self.opts)),
            "jobs": len(job_ids),
            "rows_by_status": dict(Counter(row["status"] for row in rows.values())),
            "queue_states": dict(queue_states),
            "queue_failed_reasons": dict(failed_reasons),
            "jobs_with_wrong_outputs": wrong_outputs,
            "storage_temp_files": temp_files,
            "kills": len(kills),
            "kills_that_caught_ffmpeg": sum(1 for k in kills if k.ffmpeg),
            "jobs_in_hand_at_kills": sum(len(k.jobs) for k in kills),
            "recoveries": len(recoveries),
            "jobs_stuck_after_a_kill": unrecovered,
            "recovery_s": _stats(recoveries),
            "runs_total": total_runs,
            "runs_beyond_first": total_runs - len(job_ids),
            # BullMQ's stalledCounter: runs whose node stopped renewing the lock (killed, or frozen).
            "runs_cut_short": sum(stalled_in_queue.values()),
            "runs_per_job": {str(k): v for k, v in sorted(Counter(started_in_queue.values()).items())},
            "runs_logged": sum(runs_in_logs[j] for j in job_ids),
            # A node killed between taking a job and its first log line leaves a run only BullMQ saw.
            "runs_not_logged": {
                j: [runs_in_logs[j], started_in_queue[j]] for j in job_ids if runs_in_logs[j] != started_in_queue[j]
            },
            "duplicate_results_discarded": sum(lost.values()),
            "reconciler_actions": dict(reconciled),
            "orphaned_ffmpeg_stopped_by_restarts": orphans,
            "attempts_in_rows": {
                str(k): v for k, v in sorted(Counter(row["attempts"] for row in rows.values()).items())
            },
            "ffmpeg_left": ffmpeg_left,
            "work_dirs_left": work_left,
            "node_exit_codes": stop_codes,
            "seconds": round(seconds, 1),
            "kill_log": [
                {
                    "t": round(k.at - kills[0].at, 2),
                    "node": k.node,
                    "ffmpeg": k.ffmpeg,
                    "jobs_in_hand": sorted(k.jobs),
                    "recovery_s": k.recovered,
                }
                for k in kills
            ],
        }


def _stats(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": round(statistics.median(ordered), 3),
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 3),
    }


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import RESULTS_DIR, environment, isolated_data_dir, shown_path, write_result

    defaults = SoakOptions()
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument(
        "--kill-every",
        type=float,
        default=defaults.kill_every,
        metavar="S",
        help="seconds between kills, each jittered by +/-50%% (default %(default)s)",
    )
    parser.add_argument("--lock-seconds", type=float, default=defaults.lock_seconds)
    parser.add_argument("--stalled-interval-seconds", type=float, default=defaults.stalled_interval_seconds)
    parser.add_argument("--reconcile-interval-seconds", type=float, default=defaults.reconcile_interval_seconds)
    parser.add_argument("--max-stalled", type=int, default=defaults.max_stalled)
    parser.add_argument("--max-deaths-per-job", type=int, default=defaults.max_deaths_per_job)
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--clip-seconds", type=float, default=defaults.clip_seconds)
    parser.add_argument("--clip-size", default="x".join(map(str, defaults.clip_size)), metavar="WxH")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir (node logs) and print where it is")
    args = parser.parse_args()
    if args.max_deaths_per_job > args.max_stalled:
        parser.error("--max-deaths-per-job above --max-stalled would fail jobs for good")
    opts = SoakOptions(
        jobs=args.jobs,
        nodes=args.nodes,
        kill_every=args.kill_every,
        lock_seconds=args.lock_seconds,
        stalled_interval_seconds=args.stalled_interval_seconds,
        reconcile_interval_seconds=args.reconcile_interval_seconds,
        max_stalled=args.max_stalled,
        max_deaths_per_job=args.max_deaths_per_job,
        timeout=args.timeout,
        seed=args.seed,
        clip_seconds=args.clip_seconds,
        clip_size=tuple(int(v) for v in args.clip_size.split("x")),
    )
    with isolated_data_dir("soak", keep=args.keep):
        result = run_soak(opts)
        env = environment()
    result = {"benchmark": "soak", "method": __doc__.split("\n\n")[1:3], **result, "environment": env}
    out = write_result(args.out, result)
    ok = (
        result["rows_by_status"] == {"completed": opts.jobs}
        and not result["jobs_with_wrong_outputs"]
        and not result["ffmpeg_left"]
        and not result["work_dirs_left"]
    )
    print(
        f"{'PASS' if ok else 'FAIL'}: {result['jobs']} jobs {result['rows_by_status']}, {result['kills']} kills, "
        f"{result['recoveries']} recoveries (longest {result['recovery_s'].get('max', '-')} s), "
        f"{result['runs_beyond_first']} runs beyond the first, "
        f"{result['duplicate_results_discarded']} duplicate results discarded; {shown_path(out)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
