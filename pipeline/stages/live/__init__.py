"""One live camera's loop over the stages: frames as they arrive, latency first, every drop counted."""
