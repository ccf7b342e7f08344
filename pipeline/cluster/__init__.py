"""
Every Ray call of the project: the stages in actors, and the graph the jobs ask.

- `runtime.py`: Ray itself (a private local instance, or a cluster to join), stopped leaving nothing behind.
- `plan.py`: what each actor asks of Ray, checked against the cluster first; `stream_placement.py`: which node a
  stream runs on.
- One actor per file around the stages: `stream_actor.py` (decodes a stream and drives it), `model_actor.py` (the
  network, for every stream and camera), `sink_actor.py` (one stream's output), `camera_actor.py` (one camera's
  loop); `ray_calls.py`: what they share (errors unwrapped, answers within a deadline, a process's figures).
- `model_router.py` (ModelRouter: which model actor gets the next batch, the unhealthy ones left out),
  `stream_actor_cache.py` (StreamActorCache: stream actors kept warm between streams), `camera_supervisor.py`
  (CameraSupervisor: a many-camera job's camera actors), `metrics.py` (live counters in Ray's metrics).
- `graph.py`: DepthGraph, what the jobs ask: the model actors, `run_stream`, `infer`, the camera supervisor.
"""
