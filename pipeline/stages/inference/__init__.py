"""Frames to depth on the model's device: one stream's batches, or many cameras' frames batched together."""
