"""
The resource plan: what the model, decode and sink actors ask Ray for, checked against the cluster before any actor
is made.

Takes: the job's settings and the cluster's resources (`ray.cluster_resources()`: CPU, GPU, memory), and, where the
driver can tell, why torch cannot use the GPUs Ray sees.
Gives: an `ActorPlan` (model actors and their GPU shares, torch threads, batch sizes, where the smoother runs, how
many streams may be open at once), or a one-line `PipelineError` for a request the cluster can never meet (Ray would
leave such an actor pending forever, without a word).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import PipelineError
from pipeline.settings import PipelineSettings

__all__ = ["max_streams_for", "plan_actors"]

SINKS_GPU_ROOM = 0.1  # of each GPU, kept for sinks that smooth there (smoothing.device: cuda)
# One such sink: a token share (its work is a few ms of arithmetic a frame), so that 100 streams fit on a GPU; with
# 0.02 the sixth stream on a GPU could not be placed, and a batch job or a segmented video opens more than that
SINK_GPU_SHARE = 0.001


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, on what, with which Ray resources; and where each stream's smoother runs."""

    model_actors: int
    use_gpu: bool
    notes: tuple[str, ...]  # what the user should know about the plan (a GPU torch cannot use): warnings
    model_options: dict
    torch_threads: int
    batch_size: int
    network_batch: int
    smoother_device: str
    sink_options: dict
    max_streams: int  # streams open at once in the job (each a decode and a sink process)


def plan_actors(settings: PipelineSettings, resources: dict[str, float], cuda_problem: str | None = None) -> ActorPlan:
    """Check the settings against the cluster's resources before any actor is made.

    Ray would otherwise leave an actor it can never place pending forever, without a word: every request that the
    whole cluster cannot satisfy is a one-line `PipelineError` here. `cuda_problem`: why torch cannot use the GPUs
    Ray sees (a CPU-only build of torch, a driver older than torch's CUDA), where the driver can tell (a local
    cluster: its workers run this torch); then `--device auto` runs on the CPU with a note that says why, and a
    CUDA device asked for is an error before any actor starts.
    """
    model, ray_settings = settings.model, settings.ray
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    notes = []
    if gpus >= 1 and cuda_problem:
        for name, device in (("--device", model.device), ("smoothing.device", settings.smoothing.device)):
            if device.startswith("cuda"):
                raise PipelineError(f"{name} {device}: Ray sees {gpus:g} GPU but {cuda_problem}")
        notes.append(f"Ray sees {gpus:g} GPU but {cuda_problem}: everything runs on the CPU")
        gpus = 0
    if gpus < 1:
        for name, device in (("--device", model.device), ("smoothing.device", settings.smoothing.device)):
            if device.startswith("cuda"):
                raise PipelineError(f"{name} {device}: the Ray cluster has no GPU (use cpu or auto)")
    use_gpu = model.device != "cpu" and gpus >= 1
    if model.precision == "float16" and not use_gpu:
        raise PipelineError("precision float16 needs a GPU and none is in use; use bfloat16 or float32 on the CPU")
    count = ray_settings.model_actors or (int(gpus) if use_gpu else 1)
    if count > cpus:
        raise PipelineError(f"--model-actors {count}: each model actor takes 1 CPU and the Ray cluster has {cpus:g}")
    smoothing_device = settings.smoothing.device
    # auto: the CPU. Depth arrives at the model's resolution, where the smoother costs a few ms of one core; on the
    # GPU every stream's sink would open its own CUDA context (~0.5 GB, seconds) and hold a share of the GPU
    # Inside an actor Ray shows only the GPU it assigned, as cuda:0: "cuda:1" would be an invalid ordinal there
    smoother_device = "cpu" if smoothing_device == "auto" else smoothing_device.partition(":")[0]
    sinks_on_gpu = smoother_device.startswith("cuda")
    model_options = {"num_cpus": 1}
    share = 0.0
    if use_gpu:
        # Shares from the count, so that N actors fit on the GPUs there are (2 on one GPU: half each); a tenth of
        # each GPU is left for the sinks when they smooth there (SINK_GPU_SHARE each)
        share = 1 / math.ceil(count / gpus) * (1 - SINKS_GPU_ROOM if sinks_on_gpu else 1)
        if ray_settings.gpus_per_model_actor:  # asked for: several jobs (live cameras, batches) share a GPU
            share = ray_settings.gpus_per_model_actor
            check_gpu_shares(count, share, gpus, sinks_on_gpu)
        model_options = {"num_gpus": round(share, 4), "max_concurrency": 2, "num_cpus": 1}
    threads = model.threads or (0 if use_gpu else max(1, int(cpus // count)))
    max_streams = ray_settings.max_streams or max_streams_for(cpus - count, resources.get("memory", 0))
    if sinks_on_gpu:  # every open stream's sink holds a share of a GPU: no more streams than the shares left
        sink_room = int((gpus - count * share) / SINK_GPU_SHARE + 1e-6)
        if ray_settings.max_streams and ray_settings.max_streams > sink_room:
            raise PipelineError(f"ray.max_streams {ray_settings.max_streams}: each stream's sink takes "
                                f"{SINK_GPU_SHARE:g} GPU (smoothing.device: cuda), and the model actors leave room "
                                f"for {sink_room}")
        max_streams = min(max_streams, sink_room)
    batch_size = settings.batching.batch_size or (8 if use_gpu else 4)
    return ActorPlan(
        model_actors=count,
        use_gpu=use_gpu,
        notes=tuple(notes),
        model_options=model_options,
        torch_threads=threads,
        batch_size=batch_size,
        network_batch=settings.batching.network_batch or (batch_size if use_gpu else 1),
        smoother_device=smoother_device,
        sink_options={"num_gpus": SINK_GPU_SHARE} if sinks_on_gpu else {},
        max_streams=max_streams,
    )


def check_gpu_shares(count: int, share: float, gpus: float, sinks_on_gpu: bool) -> None:
    """Model actors of `share` GPU each, and the sinks' shares when they smooth on the GPU, all fit the GPUs, or a
    one-line error: Ray would otherwise leave an actor (or every stream's sink) waiting for a GPU share that never
    frees. A fractional share must fit within one GPU, so a GPU holds floor(1 / share) actors."""
    per_gpu = math.floor(1 / share + 1e-9) if share < 1 else 1
    if count > per_gpu * math.floor(gpus) or count * share > gpus + 1e-9:
        raise PipelineError(f"{count} model actors of {share:g} GPU each do not fit on {gpus:g} GPUs ({per_gpu} of "
                            f"them fit on one GPU)")
    if sinks_on_gpu and gpus - count * share < SINK_GPU_SHARE * 2 - 1e-9:
        raise PipelineError(f"{count} model actors of {share:g} GPU each leave no GPU share for the sinks, which "
                            f"smooth on the GPU (smoothing.device: cuda; {SINK_GPU_SHARE:g} GPU each): lower "
                            f"ray.gpus_per_model_actor, or smooth on the CPU (smoothing.device: auto)")


STREAM_MEMORY_BYTES = 1.5e9  # a stream's decode and sink processes at 720p (peak RSS about 0.7 GB each)


def max_streams_for(spare_cpus: float, memory_bytes: float) -> int:
    """Streams a job opens at once: one per CPU the model actors leave (a stream's decode and sink keep about a core
    busy), at least 2, and no more than Ray's memory resource holds. Without it, a batch job opened videos in flight
    x segments streams: about 225 processes pairs on a 16-core node."""
    by_cpu = max(2, int(spare_cpus))
    by_memory = int(memory_bytes // STREAM_MEMORY_BYTES) if memory_bytes else by_cpu
    return max(1, min(by_cpu, by_memory))
