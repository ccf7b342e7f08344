"""
The batch job's memory across runs: `DIR/batch_status.jsonl`, one line per video that finished or failed.

Takes: records from the job as each video ends (append-only, flushed and fsynced line by line, so a job killed at any
moment leaves every earlier line intact; a torn last line is ignored when read).
Gives: for the next run of the same command, which videos are done and can be skipped without touching their output:
the last record for the video says done, for the same settings (a digest of the settings that shape the output) and
the same input (size and modification time), and the output file is still there with the size recorded. The
SHA-256 of each output is recorded as well, for anyone who wants to verify outputs later; checking it on every run
would mean reading every output again. In object storage (an `s3://` output prefix): one object per video under
`DIR/batch_status/`, and an output counts as still there when its size and ETag are those recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from pipeline import storage
from pipeline.stages.sinks.image_sequence_writer import path_size
from pipeline.stages.sources.image_sequence import is_image_sequence, sequence_stamp

__all__ = ["BatchStatus", "input_stamp", "settings_digest"]

STATUS_NAME = "batch_status.jsonl"
LEDGER_NAME = "batch_status"  # in object storage: a prefix of one object per video


def settings_digest(sections: dict) -> str:
    """A short digest of the settings that shape an output (model, output, smoothing), as plain data."""
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_stamp(source: Path | str) -> dict:
    """What says an input is the same as last time: a file's size and modification time (an image sequence's:
    its files' count, total size and latest modification)."""
    if is_image_sequence(str(source)):
        return sequence_stamp(str(source))
    if storage.is_remote(source):
        return storage.input_stamp(str(source))
    stat = os.stat(source)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class BatchStatus:
    """The status file of one output folder; thread-safe appends. An output prefix in object storage, which cannot
    append, keeps one small object per video instead, `DIR/batch_status/<digest of its key>.json`, its latest record,
    each replaced whole: a rerun, or a second driver by mistake, writes whole records and can never tear one."""

    def __init__(self, folder: Path | str):
        self.remote = storage.is_remote(folder)
        self.path = storage.join(folder, LEDGER_NAME if self.remote else STATUS_NAME)
        self._lock = threading.Lock()
        self.last: dict[str, dict] = {}  # video key -> its latest record
        if self.remote:
            for data in storage.read_all(storage.find(self.path)).values():
                try:
                    record = json.loads(data)
                    self.last[record["video"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # (not a record of ours)
        elif self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self.last[record["video"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill mid-write

    def is_done(self, key: str, settings: str, stamp: dict, output: Path) -> bool:
        record = self.last.get(key)
        if not record or record.get("status") != "done":
            return False
        if record.get("settings") != settings or record.get("input_stamp") != stamp:
            return False
        if storage.is_remote(output):
            return storage.exists(output) and storage.input_stamp(output) == record.get("output_stamp")
        return output.exists() and path_size(output) == record.get("bytes")

    def record(self, key: str, **fields) -> dict:
        record = {"video": key, **fields, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = json.dumps(record, default=str) + "\n"
        if self.remote:
            name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".json"
            storage.write_bytes(storage.join(self.path, name), line)
            with self._lock:
                self.last[key] = record
            return record
        with self._lock:
            with open(self.path, "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self.last[key] = record
        return record
