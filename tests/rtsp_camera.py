"""
A camera for the live tests: GStreamer's RTSP server serving a moving test pattern over RTSP (PLAY).

    /usr/bin/python3 tests/rtsp_camera.py PORT [WIDTH HEIGHT FPS]

Runs under the system Python (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0; .ci/run installs them) until it is
killed; serves rtsp://127.0.0.1:PORT/camera. Prints "ready" once it listens. The pattern moves (a ball over a
smpte pattern), so every frame differs from the last, as a camera's would.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = sys.argv[1]
    width, height, fps = (int(v) for v in (sys.argv[2:5] if len(sys.argv) >= 5 else (160, 96, 15)))
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball background-color=0xff202080 "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/camera", factory)
    server.get_thread_pool().set_max_threads(-1)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
