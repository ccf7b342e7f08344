"""The stages a frame goes through, as plain classes that know nothing of Ray, the settings or which job runs them:

    sources/ -> inference/ -> render/ -> sinks/        (live/: one camera's loop over the same stages)

- `frames.py`: what flows between them (FrameBatch, DepthBatch, VideoInfo), checked where made; `pixels.py`: frame
  layouts (RGB, I420) and their conversions.
- `sources/`: `video_decoder.py` (VideoDecoder: a file or URL), `image_sequence.py` (a folder, glob or pattern),
  `live_stream.py` (LiveSource: a camera, reconnecting).
- `inference/`: `depth_worker.py` (DepthWorker: frames -> depth on the model's device), `cross_stream_batcher.py`
  (many cameras' frames in one network pass).
- `render/`: `smoothing.py` (temporal smoothers), `colorize.py` (colour, gray, 16-bit), `depth_units.py` (relative
  depth or metres), `statistics.py` (order statistics per frame).
- `sinks/`: `depth_sink.py` (DepthSink: order, smooth, render, write one output), `video_writer.py`,
  `image_sequence_writer.py` (EXR / 16-bit PNG folders), `rtsp_publisher.py`, `background_writer.py` (an encoder
  on its own thread), `output_files.py` (temporary names, clean-up, recovery), `file_lock.py`.
- `live/`: `camera_runner.py` (LiveCamera: one camera's loop, latency first), `frame_buffer.py` (frames waiting).
"""
