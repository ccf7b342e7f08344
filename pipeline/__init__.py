"""
Video depth as a pipeline: how a frame flows, and the ways to run it.

    source (stages/decode.py, image_sequence.py, live_source.py)
      -> FrameBatch (stages/frames.py) -> the model (stages/infer.py: DepthWorker, on a model actor)
      -> DepthBatch -> the sink (stages/sink.py: order, smoothing.py, colorize.py / depth_units.py)
      -> a writer (stages/encode.py, sequence_writer.py, publish.py; output_files.py while written)

Layers, each importing only those below it (tests/test_layers.py keeps them):
- `model/`: the network, plain PyTorch; knows nothing of video, Ray or this package.
- `stages/`: plain classes a frame goes through, testable without Ray; they know nothing of Ray or the settings
  (`urls.py` is theirs too: the URL schemes in one place).
- `settings.py`: typed settings from presets and flags; it turns them into what the stages take.
- the wiring (`runtime.py`, `plan.py`, `placement.py`, `graph.py`, `actors.py`, the pools, `live_metrics.py`):
  every Ray call is here; `graph.DepthGraph` is what the jobs ask.
- `jobs/`: the ways to run it (a file, segments, a batch, one camera, many cameras with an HTTP API): policy only,
  never Ray itself. `run_pipeline.py` (the `video-depth` command) parses and dispatches.
"""
