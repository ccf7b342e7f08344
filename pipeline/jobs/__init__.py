"""
The ways to run the pipeline, as policy over the graph (cluster/graph.py), never Ray itself:

- `file.py`: one video, whole or in keyframe segments (`segments.py`), joined at the end.
- `batch.py`: many videos, resumable (`inputs.py` finds them, `outputs.py` checks their outputs, `status.py` keeps
  what is done), a report at the end; `thread_fan_out.py`: the driver threads that keep several open.
- `live.py`: one camera, latency first; `cameras_job.py`: many cameras, those of a file (`cameras.py`: the file and
  the running cameras) and those the HTTP API adds (`control_api.py`).

Each job checks what it was asked before Ray starts (`check_file_run`, `LiveJob.from_request`,
`CamerasJob.from_request`: one-line errors naming the flag, file or key); `run_pipeline.py` parses and dispatches.
"""
