"""
The ways to run the pipeline, as policy over the graph (cluster/graph.py), never Ray itself:

- `file.py`: one video, whole or in keyframe segments (`segments.py`), joined at the end.
- `batch.py`: many videos, resumable (`inputs.py` finds them, `outputs.py` checks their outputs, `status.py` keeps
  what is done), a report at the end; `thread_fan_out.py`: the driver threads that keep several open.
- `live.py`: one camera, latency first; `cameras.py`: many cameras from a file, changed over HTTP
  (`control_api.py`).
"""
