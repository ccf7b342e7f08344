"""
Video depth as a pipeline: how a frame flows, and the ways to run it.

    stages/sources/   a video (video_decoder.py), an image sequence, a live stream (live_stream.py)
        -> FrameBatch (stages/frames.py: B frames, uint8, with their timestamps)
    stages/inference/ the model on its device (depth_worker.py); live cameras batched together (cross_stream_batcher.py)
        -> DepthBatch (B depth maps at the model's resolution, same timestamps)
    stages/render/    smoothing over time, colour or 16-bit, relative depth or metres (depth_units.py)
    stages/sinks/     in order (depth_sink.py), to a video (video_writer.py), a frame folder
                      (image_sequence_writer.py) or RTSP (rtsp_publisher.py), whole or not at all (output_files.py;
                      an object in a bucket: remote_output.py)
    stages/live/      one live camera's loop over the stages above (camera_runner.py)

Layers, each importing only those below it (tests/test_layers.py keeps them):
- `model/`: the network, plain PyTorch; knows nothing of video, Ray or this package.
- `errors.py` (the user's errors, one line each), `urls.py` (URL schemes), `formats.py` (the depth outputs),
  `storage.py` (s3:// and gs:// objects: read in place, outputs uploaded whole).
- `stages/`: plain classes a frame goes through, testable without Ray; they know nothing of Ray or the settings.
- `settings.py`: typed settings from presets and flags; it turns them into what the stages take.
- `cluster/`: every Ray call. One actor per file (stream, model, sink, camera) around the stages; the resource plan,
  where streams run, the model router, the stream actors' cache, the camera supervisor; `graph.DepthGraph` is what
  the jobs ask. Ray Data's door: `ray_data.DepthEstimator` (for `map_batches`) and the video-frames datasource.
- `jobs/`: the ways to run it (a file, segments, a batch, one camera, many cameras with an HTTP API, a Ray Data
  dataset of video frames): policy only, never Ray itself. `run_pipeline.py` (the `video-depth` command) parses and dispatches.
"""
