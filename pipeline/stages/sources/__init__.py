"""Where frames come from: a video file or URL, an image sequence, a live stream. Each gives FrameBatches."""
