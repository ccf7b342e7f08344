"""The stages a frame goes through, as plain classes that know nothing of Ray or of which job runs them:

    decode.py (VideoDecoder) -> infer.py (DepthWorker) -> smoothing.py -> colorize.py -> encode.py (DepthVideoWriter)

with frames.py (what flows between them), pixels.py (frame layouts), statistics.py (order statistics per frame) and
sink.py (DepthSink: order, smooth, render, write for one output).
"""
