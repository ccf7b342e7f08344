"""plan_actors: what the model and sink actors ask Ray for, checked against a cluster's resources (no Ray needed)."""

from __future__ import annotations

import pytest

from pipeline.cluster.plan import plan_actors
from pipeline.errors import PipelineError
from pipeline.settings import load_settings


def plan(resources: dict, **overrides):
    return plan_actors(load_settings(None, overrides), resources)


@pytest.mark.parametrize("gpus, actors, share", [(1, 0, 1.0), (1, 2, 0.5), (2, 3, 0.5), (4, 0, 1.0), (1, 3, 0.3333)])
def test_gpu_shares_follow_the_actor_count(gpus, actors, share):
    result = plan({"CPU": 16, "GPU": gpus}, **{"ray.model_actors": actors})
    assert result.use_gpu and result.model_actors == (actors or gpus)
    assert result.model_options["num_gpus"] == share
    # Every actor fits: per GPU, the shares of the actors Ray packs onto it add up to at most one
    assert result.model_options["num_gpus"] * -(-result.model_actors // gpus) <= 1.0001
    assert result.smoother_device == "cpu" and result.sink_options == {}, "auto smooths on the CPU"


def test_a_gpu_share_asked_for_lets_several_jobs_use_one_gpu():
    """ray.gpus_per_model_actor 0.25: four jobs' model actors (live cameras, batches) fit on one GPU, where the
    default (a whole GPU each) left the second job waiting for placement and failing after placement_timeout_s."""
    result = plan({"CPU": 16, "GPU": 1}, **{"ray.gpus_per_model_actor": 0.25})
    assert result.use_gpu and result.model_actors == 1 and result.model_options["num_gpus"] == 0.25
    assert plan({"CPU": 16, "GPU": 2}, **{"ray.gpus_per_model_actor": 0.5, "ray.model_actors": 4}) \
        .model_options["num_gpus"] == 0.5
    with pytest.raises(PipelineError, match="3 model actors of 0.5 GPU each do not fit on 1 GPUs"):
        plan({"CPU": 16, "GPU": 1}, **{"ray.gpus_per_model_actor": 0.5, "ray.model_actors": 3})
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(PipelineError, match="ray.gpus_per_model_actor"):
            load_settings(None, {"ray.gpus_per_model_actor": bad})
    assert plan({"CPU": 4}, **{"ray.gpus_per_model_actor": 0.25}).model_options == {"num_cpus": 1}  # no GPU: moot


def test_smoothing_on_the_gpu_leaves_room_for_the_sinks():
    result = plan({"CPU": 16, "GPU": 1}, **{"smoothing.device": "cuda"})
    assert result.model_options["num_gpus"] == 0.9
    # A batch job or a segmented video opens tens of streams on a GPU node: every sink of 64 must fit in the room
    assert 64 * result.sink_options["num_gpus"] <= 1 - result.model_options["num_gpus"] + 1e-9


def test_smoothing_on_gpu_n_is_the_sinks_own_gpu():
    """Ray shows an actor only the GPU it assigned, as cuda:0: cuda:1 would be an invalid ordinal inside the sink."""
    assert plan({"CPU": 16, "GPU": 2}, **{"smoothing.device": "cuda:1"}).smoother_device == "cuda"


def test_a_gpu_that_torch_cannot_use():
    """Ray sees a GPU, but torch is a CPU-only build (or its CUDA is newer than the driver): auto runs on the CPU
    with a note that says why; a CUDA device asked for is an error before any actor starts."""
    problem = "this torch is a CPU-only build"
    settings = load_settings(None, {})
    fallback = plan_actors(settings, {"CPU": 8, "GPU": 1}, cuda_problem=problem)
    assert not fallback.use_gpu and fallback.model_options == {"num_cpus": 1}
    assert fallback.notes == (f"Ray sees 1 GPU but {problem}: everything runs on the CPU",)
    for key, device in (("model.device", "cuda"), ("smoothing.device", "cuda:0")):
        with pytest.raises(PipelineError, match=f"{device}: Ray sees 1 GPU but {problem}"):
            plan_actors(load_settings(None, {key: device}), {"CPU": 8, "GPU": 1}, cuda_problem=problem)
    assert plan_actors(settings, {"CPU": 8, "GPU": 1}).use_gpu and not plan({"CPU": 8, "GPU": 1}).notes


def test_cpu_only_cluster():
    result = plan({"CPU": 4})
    assert not result.use_gpu and result.model_options == {"num_cpus": 1} and result.torch_threads == 4
    # Batches of 4 between actors (a hand-over costs about a millisecond), one frame at a time through the network
    assert result.batch_size == 4 and result.network_batch == 1
    on_gpu = plan({"CPU": 16, "GPU": 1})
    assert on_gpu.batch_size == on_gpu.network_batch == 8
    chosen = plan({"CPU": 4}, **{"batching.batch_size": 6, "batching.network_batch": 2})
    assert chosen.batch_size == 6 and chosen.network_batch == 2


@pytest.mark.parametrize("resources, overrides, message", [
    ({"CPU": 2}, {"ray.model_actors": 5}, "each model actor takes 1 CPU and the Ray cluster has 2"),
    ({"CPU": 2}, {"model.device": "cuda:1"}, "--device cuda:1: the Ray cluster has no GPU"),
    ({"CPU": 2}, {"smoothing.device": "cuda"}, "smoothing.device cuda: the Ray cluster has no GPU"),
    ({"CPU": 2}, {"model.precision": "float16"}, "float16 needs a GPU"),
    ({"CPU": 2, "GPU": 1}, {"model.precision": "float16", "model.device": "cpu"}, "float16 needs a CUDA device"),
])
def test_requests_the_cluster_cannot_meet(resources, overrides, message):
    with pytest.raises(PipelineError, match=message):
        plan(resources, **overrides)


@pytest.mark.parametrize("resources, expected", [
    ({"CPU": 16, "GPU": 1, "memory": 90e9}, 15),  # a GPU node: a stream per core the model actor leaves
    ({"CPU": 16, "GPU": 1, "memory": 6e9}, 4),  # little memory: what it holds (about 1.5 GB a stream)
    ({"CPU": 2, "memory": 16e9}, 2),  # at least two
    ({"CPU": 64, "GPU": 8, "memory": 400e9}, 56),
])
def test_streams_open_at_once_are_bounded_by_cpus_and_memory(resources, expected):
    assert plan(resources).max_streams == expected
    assert plan(resources, **{"ray.max_streams": 3}).max_streams == 3


def test_gpu_shares_are_planned_together_with_the_sinks():
    """Two model actors of 0.5 and sinks smoothing on the GPU asked for 1.001 GPUs of one: every stream waited for
    its sink's share and failed after a minute. Refused before anything starts."""
    with pytest.raises(PipelineError, match="leave no GPU share for the sinks"):
        plan({"CPU": 16, "GPU": 1}, **{"ray.gpus_per_model_actor": 0.5, "ray.model_actors": 2,
                                      "smoothing.device": "cuda"})
    # Three actors of 0.6 on two GPUs: 1.8 GPUs in all, but one GPU holds one of them: the third never places
    with pytest.raises(PipelineError, match="1 of them fit on one GPU"):
        plan({"CPU": 16, "GPU": 2}, **{"ray.gpus_per_model_actor": 0.6, "ray.model_actors": 3})
    # Room left: the streams open at once are bounded by the sinks' shares it holds
    result = plan({"CPU": 64, "GPU": 1, "memory": 1e12}, **{"ray.gpus_per_model_actor": 0.495, "ray.model_actors": 2,
                                                           "smoothing.device": "cuda"})
    assert result.sink_options == {"num_gpus": 0.001} and result.max_streams == 10
    assert 2 * result.model_options["num_gpus"] + result.max_streams * 0.001 <= 1.0
    with pytest.raises(PipelineError, match="ray.max_streams 50: each stream's sink takes 0.001 GPU"):
        plan({"CPU": 64, "GPU": 1}, **{"ray.gpus_per_model_actor": 0.495, "ray.model_actors": 2,
                                      "smoothing.device": "cuda", "ray.max_streams": 50})
    # The default shares leave a tenth of each GPU to the sinks: 100 streams
    assert plan({"CPU": 256, "GPU": 1, "memory": 1e13}, **{"smoothing.device": "cuda"}).max_streams == 100
