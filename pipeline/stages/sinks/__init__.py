"""Where depth goes: in frame order to a video file, a frame folder or an RTSP server, whole or not at all."""
