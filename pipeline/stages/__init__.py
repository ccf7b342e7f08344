"""The stages a frame goes through, as plain classes that know nothing of Ray or of which job runs them:

    decode.py (VideoDecoder) -> infer.py (DepthWorker) -> smoothing.py -> colorize.py -> encode.py (DepthVideoWriter)
    or image_sequence.py                                                   or sequence_writer.py (EXR / 16-bit PNG)

with frames.py (what flows between them), pixels.py (frame layouts), statistics.py (order statistics per frame),
sink.py (DepthSink: order, smooth, render, write for one output; background_writer.py: its encoder on a thread of
its own), depth_units.py (relative depth or metres: what the outputs say and how they scale), file_lock.py (work in progress marked for clean-ups), and live_source.py / publish.py for live streams.
"""
