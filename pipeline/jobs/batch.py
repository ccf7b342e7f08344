"""
A batch job: many videos through one pool of model actors, resumable, with a report at the end.

Takes: the videos (`BatchItem`s from inputs.py), an output folder, the job's settings and a `DepthGraph` (its model
actors are the pool every video shares).
Gives: each video's depth video under the folder (written atomically, by the sink or the segment join), a line per
finished video in the status file (status.py), `DIR/batch_report.json` and the same report as a dict.

Scheduling is Ray's wherever Ray has it: model actors declare their GPUs and CPUs and are restarted where a node
died (`max_restarts`, `max_task_retries`), decode and sink actors are spread over the nodes, and a stream whose
worker or node died is run again (`segments.retries`). What Ray has no notion of is a *video*: how many are open at
once (each holds decode and sink actors and up to `batching.max_in_flight` batches), and that one that fails for its
own reasons (corrupt, no video stream) is recorded and the job goes on. That part is here: a fixed number of driver
threads, each taking the next video from a queue, so at most `videos_in_flight` are open; long videos are split
into segments by the graph, so one film does not hold the job back.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.errors import PipelineError, one_line
from pipeline.jobs.file import process_video
from pipeline.jobs.inputs import BatchItem
from pipeline.jobs.outputs import InputFiles, check_output
from pipeline.jobs.status import BatchStatus, input_stamp, settings_digest
from pipeline.jobs.thread_fan_out import run_in_threads
from pipeline.settings import PipelineSettings, check_combination, merge
from pipeline.stages.sinks.image_sequence_writer import path_digest, path_size
from pipeline.stages.sinks.output_files import abandoned_partials, remove_partial, write_whole

__all__ = ["BatchJob", "BatchOptions", "EXIT_SOME_FAILED", "report_table"]

REPORT_NAME = "batch_report.json"
EXIT_SOME_FAILED = 3  # the job ran, and at least one video failed (each is named in the report)
PER_VIDEO_SECTIONS = ("input", "output", "smoothing", "segments")  # what a manifest line may change for its video


@dataclass(frozen=True)
class BatchOptions:
    force: bool = False  # redo every video, even those the status file says are done
    videos_in_flight: int = 0  # 0: one per CPU the model actors leave free in the cluster, at least 2


@dataclass
class VideoPlan:
    item: BatchItem
    settings: PipelineSettings
    output: Path | str  # (an object's URL as text)
    digest: str


class BatchJob:
    """Plans the job at construction (every video's settings and output, checked before Ray starts); `run(graph)`
    does it."""

    def __init__(self, settings: PipelineSettings, items: list[BatchItem], folder: Path | str,
                 options: BatchOptions = BatchOptions(), log: Callable[[str], None] | None = None):
        self.settings = settings
        self.graph = None
        self.folder = folder
        self.options = options
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        inputs = InputFiles(item.source for item in items)
        self.plans = [self._plan(item, inputs) for item in items]  # every manifest option checked before any work
        self.status = BatchStatus(folder)
        self.rows: dict[str, dict] = {}  # video key -> its row in the report, as each finishes
        # What a rerun has left to do (known before Ray starts: with nothing to do, Ray is not started)
        self.pending: list[VideoPlan] = []
        for plan in self.plans:
            if not self.options.force and self._is_done(plan):
                record = self.status.last[plan.item.key]
                self.rows[plan.item.key] = {"video": plan.item.key, "status": "skipped", "output": record["output"],
                                            "frames": record["frames"], "reason": "done in an earlier run"}
            else:
                self.pending.append(plan)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open_outputs: set[Path | str] = set()
        self._frames_done = 0
        self._started_at = time.time()
        self.remote = storage.is_remote(folder)

    def _plan(self, item: BatchItem, inputs: InputFiles) -> VideoPlan:
        settings = self.settings
        if item.options:
            where = f"{item.where or item.source}: options"
            for key in item.options:
                if isinstance(key, str) and "." in key and key.partition(".")[0] not in PER_VIDEO_SECTIONS:
                    raise PipelineError(f"{where}: {key!r} cannot differ per video (the model actors are shared); "
                                        f"a video may set {', '.join(s + '.*' for s in PER_VIDEO_SECTIONS)}")
            settings = check_combination(merge(settings, item.options, where), where)
            if settings.smoothing.device != self.settings.smoothing.device:
                raise PipelineError(f"{where}: smoothing.device cannot differ per video")
        shaping = {name: dataclasses.asdict(getattr(settings, name)) for name in ("model", "input", "output", "smoothing")}
        output = check_output(item.output_in(self.folder, settings.output.depth_format),
                              settings.output.depth_format, inputs, what=f"output of {item.source}",
                              folder_made_later=True)
        return VideoPlan(item, settings, output, settings_digest(shaping))

    # .................................................................................................................

    def run(self, graph) -> dict:
        """Process every video not done yet on the graph's model actors (`graph` None: nothing is pending); returns
        the report (also written to DIR/batch_report.json, marked `interrupted` when Ctrl-C or SIGTERM stops it)."""
        self.graph = graph
        started = time.monotonic()
        if not self.remote:
            self.folder.mkdir(parents=True, exist_ok=True)
        total, pending, rows = len(self.plans), self.pending, self.rows
        self.log(f"batch: {total} videos, {total - len(pending)} already done, {len(pending)} to do; "
                 f"outputs in {self.folder}")
        try:
            if pending:
                _ = graph.model_info  # the model actors placed and loaded: a failure there is the job's, not a video's
                run_in_threads(pending, lambda plan: self._finish(plan, rows, started, total),
                               self._videos_in_flight())
        except BaseException:
            self._stopping.set()  # videos cut short by the stop are neither recorded nor logged as failed
            # The report of this run, not an earlier one's: what finished, and the rest marked as not done
            with self._lock:
                report = self._report([rows.get(plan.item.key) or {"video": plan.item.key, "status": "not done",
                                                                   "output": None, "frames": 0}
                                       for plan in self.plans], time.monotonic() - started)
            self._write_report({**report, "interrupted": True})
            raise
        report = self._report([rows[plan.item.key] for plan in self.plans], time.monotonic() - started)
        self._write_report(report)
        return report

    @property
    def finished_now(self) -> int:
        """Videos this run finished (written and recorded in the status file)."""
        with self._lock:
            return sum(row["status"] == "done" for row in self.rows.values())

    def remove_partial_outputs(self) -> None:
        """After an interrupt: the temporary files of the videos that were open (their sinks were stopped)."""
        for output in list(self._open_outputs):
            _remove_partial_files(output)

    def _videos_in_flight(self) -> int:
        if self.options.videos_in_flight:
            return self.options.videos_in_flight
        spare = self.graph.cluster_cpus - len(self.graph.model_actors)
        return max(2, int(spare))

    def _is_done(self, plan: VideoPlan) -> bool:
        try:
            stamp = input_stamp(plan.item.source)
        except (OSError, PipelineError):  # (a sequence with a gap: it fails alone when its turn comes)
            return False
        return self.status.is_done(plan.item.key, plan.digest, stamp, plan.output)

    def _finish(self, plan: VideoPlan, rows: dict, started: float, total: int) -> None:
        """Process one video, record it and log a line with the job's progress."""
        row = self._process(plan)
        if row is None:
            return  # cut short by Ctrl-C / SIGTERM
        with self._lock:
            rows[plan.item.key] = row
            self._frames_done += row.get("frames") or 0
            elapsed = time.monotonic() - started
            done = len(rows)
        what = (f"{row['frames']} frames in {row['seconds']:.1f} s ({row['fps']:.1f} fps)"
                if row["status"] == "done" else f"FAILED: {row['reason']}")
        self.log(f"[{done}/{total} videos] {plan.item.key}: {what}; cluster "
                 f"{self._frames_done / max(elapsed, 1e-9):.1f} fps")

    def _process(self, plan: VideoPlan) -> dict | None:
        key, source = plan.item.key, plan.item.source
        started = time.monotonic()
        with self._lock:
            self._open_outputs.add(plan.output)
        try:
            stamp = input_stamp(source)  # before the work: a file changed meanwhile is redone next time
            if not self.remote:
                plan.output.parent.mkdir(parents=True, exist_ok=True)
            _remove_partial_files(plan.output, older_than=self._started_at)  # left by a killed earlier run
            summary = process_video(self.graph.with_settings(plan.settings), str(source), str(plan.output),
                                    segments=plan.settings.segments.count, resume=True)
            written = _written(plan.output)
            seconds = time.monotonic() - started
            row = {"video": key, "status": "done", "output": _relative(plan.output, self.folder),
                   "frames": summary["frames_out"], "unreadable_frames": summary.get("unreadable_frames", 0),
                   "retried_streams": summary.get("retried_streams", 0),
                   "nodes": summary.get("nodes", []), "bytes_across_nodes": summary.get("bytes_across_nodes", 0),
                   "seconds": round(seconds, 3), "fps": round(summary["frames_out"] / seconds, 3)}
            self.status.record(key, **row, **written, settings=plan.digest, input_stamp=stamp)
            return row
        except Exception as error:  # noqa: BLE001 - a video's own failure is recorded; the job goes on
            if self._stopping.is_set():
                return None  # not its own failure: the job was stopped under it
            reason = one_line(error) if isinstance(error, (PipelineError, OSError, ValueError)) else \
                f"internal {type(error).__name__}: {one_line(error)}"
            row = {"video": key, "status": "failed", "output": None, "frames": 0, "reason": reason,
                   "seconds": round(time.monotonic() - started, 3), "fps": 0.0}
            self.status.record(key, **row, settings=plan.digest)
            return row
        finally:
            with self._lock:
                self._open_outputs.discard(plan.output)

    # .................................................................................................................

    def _report(self, rows: list[dict], seconds: float) -> dict:
        counts = {state: sum(1 for r in rows if r["status"] == state) for state in ("done", "skipped", "failed")}
        if any(r["status"] == "not done" for r in rows):
            counts["not_done"] = sum(1 for r in rows if r["status"] == "not done")
        frames = sum(r["frames"] or 0 for r in rows if r["status"] == "done")
        return {
            "output_dir": str(self.folder),
            "videos": rows,
            "totals": {"videos": len(rows), **counts, "frames": frames, "seconds": round(seconds, 3),
                       "cluster_fps": round(frames / seconds, 3) if seconds > 0 else None,
                       "retried_streams": sum(r.get("retried_streams", 0) for r in rows if r["status"] == "done")},
        }

    def _write_report(self, report: dict) -> None:
        text = json.dumps(report, indent=2) + "\n"
        if self.remote:
            storage.write_bytes(storage.join(self.folder, REPORT_NAME), text)
        else:
            write_whole(self.folder / REPORT_NAME, text)


def _written(output: Path | str) -> dict:
    """What the status file records of a finished output: its size and SHA-256 (an object: its size and ETag,
    which a rerun compares without reading it)."""
    if storage.is_remote(output):
        stamp = storage.input_stamp(output)
        return {"bytes": stamp["size"], "output_stamp": stamp}
    return {"bytes": path_size(output), "sha256": path_digest(output)}


def _relative(output: Path | str, folder: Path | str) -> str:
    if storage.is_remote(output):
        return output[len(str(folder).rstrip("/")) + 1:]
    return str(output.relative_to(folder))


def _remove_partial_files(output: Path | str, older_than: float | None = None) -> None:
    """The sink's temporary files for `output` (see DepthVideoWriter), or those of them older than a time; never
    one that a live writer holds (another job's, on the same folder). An object: the multipart uploads to it that a
    killed run left open (begun before this run)."""
    if storage.is_remote(output):
        started = datetime.datetime.fromtimestamp(older_than, datetime.timezone.utc) if older_than else None
        storage.abort_uploads(output, started_before=started)
        return
    for leftover in abandoned_partials(output, older_than):
        remove_partial(leftover)


def report_table(report: dict, width: int = 48) -> str:
    """A short table of the report for stderr: one line per video that did not simply succeed, then the totals."""
    lines = []
    for row in report["videos"]:
        if row["status"] == "failed":
            lines.append(f"  failed   {row['video'][:width]:{width}s} {row['reason']}")
    totals = report["totals"]
    lines.append(f"  {totals['videos']} videos: {totals['done']} done, {totals['skipped']} skipped (done before), "
                 f"{totals['failed']} failed; {totals['frames']} frames in {totals['seconds']:.1f} s, cluster "
                 f"{totals['cluster_fps'] or 0:.1f} fps")
    return "\n".join(lines)
