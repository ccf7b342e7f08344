"""The GPU path, as far as a CPU can show it: the precision path under CUDA's dtype rules, the pinned staging
buffers, the model actor's control calls.

CUDA's layer norm refuses parameters of another dtype than its input ("expected scalar type Half but found Float";
PyTorch issue 135969); the CPU kernel accepts the mix. Weights cast once to half precision with LayerNorm kept in
float32 therefore passed every CPU test and crashed the default GPU run on its first batch. Here the normalisation
ops are wrapped to refuse mixed dtypes as CUDA does, and the cast-once path (the GPU's) runs under them.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from model import DepthPredictor, PredictorOptions
from model.predictor import cast_weights_once
from model.random_weights import random_model

NORMALISATIONS = ("layer_norm", "group_norm", "batch_norm", "instance_norm")


def refusing_mixed_dtypes(name: str, op):
    """`op`, but raising as CUDA's kernel does when a parameter's dtype differs from the input's."""

    def strict(input, *args, **kwargs):
        parameters = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        for parameter in parameters:
            if parameter.dtype != input.dtype:
                raise RuntimeError(f"{name}: expected scalar type {input.dtype} but found {parameter.dtype} "
                                   f"(CUDA's rule)")
        return op(input, *args, **kwargs)

    return strict


@pytest.fixture
def cuda_dtype_rules(monkeypatch):
    for name in NORMALISATIONS:
        monkeypatch.setattr(F, name, refusing_mixed_dtypes(name, getattr(F, name)))
    monkeypatch.setattr(torch, "layer_norm", refusing_mixed_dtypes("layer_norm", torch.layer_norm))


def test_the_strict_rule_refuses_what_cuda_refuses(cuda_dtype_rules):
    norm = torch.nn.LayerNorm(8)
    with pytest.raises(RuntimeError, match="expected scalar type torch.bfloat16 but found torch.float32"):
        norm(torch.randn(2, 8, dtype=torch.bfloat16))
    assert norm(torch.randn(2, 8)).dtype == torch.float32


@pytest.mark.parametrize("frame_hw", [(101, 143), (96, 96)], ids=["odd-grid", "square"])
def test_weights_cast_once_run_under_cuda_rules(cuda_dtype_rules, frame_hw):
    frames = torch.randint(0, 256, (2, *frame_hw, 3), dtype=torch.uint8)
    options = dict(input_size=196)
    reference = DepthPredictor(random_model("vits", seed=5), PredictorOptions(**options))(frames)
    net = random_model("vits", seed=5)
    reduced = DepthPredictor(net, PredictorOptions(precision="bfloat16", cast_weights=True, **options))(frames)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}  # LayerNorm's too: one dtype, as CUDA needs
    assert reduced.dtype == torch.float32 and reduced.shape == reference.shape
    error = ((reduced - reference).norm() / reference.norm()).item()
    assert 0 < error < 3e-2


def relative_error(net_dtype_fn, frames, reference) -> float:
    net = net_dtype_fn()
    depth = DepthPredictor(net, PredictorOptions(precision="bfloat16", cast_weights=True, input_size=196))(frames)
    return ((depth - reference).norm() / reference.norm()).item()


def test_normalising_in_half_precision_is_as_close_to_float32_as_normalising_in_float32():
    """The two ways to satisfy CUDA: every weight in half precision (the kernels accumulate the statistics in float32
    anyway), or LayerNorm computed in float32 and cast back. Both are measured against float32; the first is used."""
    frames = torch.randint(0, 256, (2, 101, 143, 3), dtype=torch.uint8)
    reference = DepthPredictor(random_model("vits", seed=5), PredictorOptions(input_size=196))(frames)
    all_half = relative_error(lambda: random_model("vits", seed=5), frames, reference)

    class Float32LayerNorm(torch.nn.LayerNorm):
        def forward(self, x):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)

    def float32_norms():
        net = random_model("vits", seed=5)
        for module in net.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.__class__ = Float32LayerNorm
        return net

    in_float32 = relative_error(float32_norms, frames, reference)
    print(f"\nrelative L2 against float32 (bfloat16, vits, 196 px): weights and norms cast {all_half:.2e}, "
          f"norms in float32 {in_float32:.2e}")
    assert all_half < 3e-2 and in_float32 < 3e-2
    assert all_half < 1.5 * in_float32  # no worse, to within the spread of two rounding paths


def test_cast_weights_once_leaves_no_float32_parameter():
    net = cast_weights_once(random_model("vits", seed=1), torch.float16)
    assert {p.dtype for p in net.parameters()} == {torch.float16}


# ---------------------------------------------------------------------------------------------------------------------
# The model actor's pinned staging buffers (the allocator is a seam: page-locked memory needs CUDA)


class CountingAllocator:
    def __init__(self):
        self.allocated: list[tuple] = []

    def __call__(self, shape, dtype):
        self.allocated.append(tuple(shape))
        return torch.empty(shape, dtype=dtype)


def test_a_short_last_batch_uses_a_slot_not_a_new_pinned_buffer():
    from pipeline.stages.inference.depth_worker import PinnedSlots

    allocate = CountingAllocator()
    slots = PinnedSlots(2, batch_size=8, allocate=allocate)
    frame = (1080, 1280)  # an I420 720p frame
    full, view = slots.take((8, *frame), torch.uint8)
    assert view.shape == (8, *frame) and allocate.allocated == [(8, *frame)] * 2
    slots.give_back(full)
    short, view = slots.take((3, *frame), torch.uint8)  # a video's last batch
    assert view.shape == (3, *frame) and view.data_ptr() == short.data_ptr()
    assert len(allocate.allocated) == 2, "no page-locking for a short batch"
    slots.give_back(short)
    again, _ = slots.take((8, *frame), torch.uint8)
    assert again.data_ptr() in (full.data_ptr(), short.data_ptr()) and len(allocate.allocated) == 2


def test_pinned_shapes_are_let_go_least_recently_used_first():
    from pipeline.stages.inference.depth_worker import PinnedSlots

    allocate = CountingAllocator()
    slots = PinnedSlots(1, batch_size=4, max_shapes=2, allocate=allocate)
    main, _ = slots.take((4, 10, 10), torch.uint8)
    slots.give_back(main)
    for size in (11, 12, 13):  # other streams' sizes, while the main stream keeps coming back
        other, _ = slots.take((4, size, size), torch.uint8)
        slots.give_back(other)
        main_again, _ = slots.take((4, 10, 10), torch.uint8)
        assert main_again.data_ptr() == main.data_ptr(), "the size in use was let go"
        slots.give_back(main_again)
    assert allocate.allocated.count((4, 10, 10)) == 1


def test_slots_of_two_shapes_taken_by_four_threads_never_deadlock():
    """Cameras of two sizes in one pass take a slot of each shape. Taken one by one, in the order the parts arrived,
    two calls holding the 1080p slots and waiting for a 720p one, and two the other way round, waited for ever (every
    camera on that model actor froze): "calls finished: 0 of 4". Taken together, all four finish."""
    import threading

    from pipeline.stages.inference.depth_worker import PinnedSlots

    slots = PinnedSlots(2, batch_size=2, allocate=CountingAllocator())
    big, small = (2, 1620, 1920), (2, 1080, 1280)  # I420 1080p and 720p
    barrier = threading.Barrier(4)
    finished = []

    def call(order):
        barrier.wait()
        for _ in range(50):
            taken = slots.take_all([(shape, torch.uint8) for shape in order])
            assert len({slot.data_ptr() for slot, _ in taken}) == len(order)
            slots.give_back_all([slot for slot, _ in taken])
        finished.append(order)

    threads = [threading.Thread(target=call, args=(order,), daemon=True)
               for order in ([big, small], [big, small], [small, big], [small, big])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(finished) == 4, f"calls finished: {len(finished)} of 4"


def test_the_old_one_at_a_time_order_does_deadlock():
    """The interleaving above, forced, with slots taken one at a time: the test's own check that it can fail."""
    import threading

    from pipeline.stages.inference.depth_worker import PinnedSlots

    slots = PinnedSlots(2, batch_size=2, allocate=CountingAllocator())
    big, small = (2, 30, 40), (2, 20, 30)
    holding, looked = threading.Barrier(4), threading.Barrier(4)
    finished = []

    def call(first, second):
        slot, _ = slots.take(first, torch.uint8)
        holding.wait()  # each holds one slot of its first shape
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (slots.take(second, torch.uint8), got.set()), daemon=True)
        waiter.start()
        finished.append(got.wait(0.5))
        looked.wait()  # no slot goes back before every call has looked (at any speed: a slow thread saw one freed)
        slots.give_back(slot)

    threads = [threading.Thread(target=call, args=order) for order in ((big, small),) * 2 + ((small, big),) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert finished == [False] * 4, "each waited with its first slot held"


def test_a_compiled_network_runs_at_a_few_pass_sizes_only():
    """With torch.compile, every new pass size compiles again inside the compute lock (tens of seconds, every camera
    stalled): live passes of 1 to 8 cameras' frames are padded to 1, 2, 4 or 8."""
    import numpy as np

    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import DepthWorker, pass_sizes

    assert pass_sizes(8) == (1, 2, 4, 8) and pass_sizes(6) == (1, 2, 4, 6) and pass_sizes(1) == (1,)
    from dataclasses import replace

    net = random_model("vits", seed=3)
    plain = DepthWorker(DepthPredictor(net, PredictorOptions(input_size=28)), batch_size=8)
    predictor = DepthPredictor(net, PredictorOptions(input_size=28))
    predictor.options = replace(predictor.options, compile=True)  # said compiled, run eager: what matters is the sizes
    worker = DepthWorker(predictor, batch_size=8)
    seen = []
    forward = predictor.forward
    predictor.forward = lambda image: (seen.append(len(image)), forward(image))[1]
    frames = np.random.default_rng(0).integers(0, 256, (8, 28, 42, 3), dtype=np.uint8)
    for count in range(1, 9):
        batches = [FrameBatch(0, [i], Fraction(1, 25), frames[i:i + 1], "rgb24") for i in range(count)]
        together = worker.infer_together(batches, "float32")
        expected = plain.infer(FrameBatch(0, list(range(count)), Fraction(1, 25), frames[:count], "rgb24"), "float32")
        assert np.allclose(np.concatenate([d.depth for d in together]), expected.depth, atol=1e-5)
    assert sorted(set(seen)) == [1, 2, 4, 8], seen
    assert worker.frames_processed == 36
    seen.clear()  # a file's short last batch: to the full batch, one size in all (tests/test_stages.py too)
    worker.infer(FrameBatch(0, [0, 1, 2], Fraction(1, 25), frames[:3], "rgb24"), "float32")
    assert seen == [8]


def test_the_workers_counters_add_up_from_many_threads():
    import threading

    from pipeline.stages.inference.depth_worker import DepthWorker

    worker = DepthWorker(DepthPredictor(random_model("vits", seed=3), PredictorOptions(input_size=28)))
    threads = [threading.Thread(target=lambda: [worker._counted(frames=1, cpu_s=0.5, gpu_ms=2.0)
                                                for _ in range(20000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (worker.frames_processed, worker.predict_cpu_s, worker.gpu_busy_ms) == (80000, 40000.0, 160000.0)


# ---------------------------------------------------------------------------------------------------------------------
# The model actor's control calls answer while batches are being inferred


def test_control_calls_do_not_queue_behind_inference(ray_cluster):
    import time

    import numpy as np
    import ray

    from pipeline.cluster.model_actor import ModelActor
    from pipeline.stages.frames import FrameBatch
    from pipeline.stages.inference.depth_worker import ModelSource
    from tests.stand_ins import build_slow_depth

    actor = ModelActor.options(num_cpus=0).remote(ModelSource(builder=build_slow_depth),
                                                  PredictorOptions(input_size=28), "cpu", 1, 1, 1)
    try:
        ray.get(actor.load.remote())
        batch = FrameBatch(0, [0], Fraction(1, 25), np.zeros((1, 28, 28, 3), np.uint8), "rgb24")
        queued = [actor.infer.remote(batch, "float32") for _ in range(4)]  # four seconds of work
        started = time.monotonic()
        usage = ray.get(actor.usage.remote(), timeout=30)
        answered_after = time.monotonic() - started
        ray.get(queued)
    finally:
        ray.kill(actor)
    assert answered_after < 2.0, f"usage waited {answered_after:.1f} s behind the batches"
    assert usage["frames"] < 4


def test_ready_answers_while_the_model_loads(ray_cluster):
    """Placement waits on `ready`; queued behind an 8 s `load` on the one control thread, it answered 9.1 s late, and a
    load longer than placement_timeout_s (a Hub download on a worker node) read as 'could not be placed'."""
    import time

    import ray

    from pipeline.cluster.model_actor import ModelActor
    from pipeline.stages.inference.depth_worker import ModelSource
    from tests.stand_ins import build_slow_loading_depth

    actor = ModelActor.options(num_cpus=0).remote(ModelSource(builder=build_slow_loading_depth),
                                                  PredictorOptions(input_size=28), "cpu", 1, 1, 1)
    try:
        ray.get(actor.ready.remote(), timeout=60)  # the process is up
        loading = actor.load.remote()
        time.sleep(0.5)  # the load has begun
        started = time.monotonic()
        assert ray.get(actor.ready.remote(), timeout=30)
        answered_after = time.monotonic() - started
        usage_ref = actor.usage.remote()
        ray.get(loading, timeout=60)
        ray.get(usage_ref, timeout=60)
    finally:
        ray.kill(actor)
    assert answered_after < 2.0, f"ready waited {answered_after:.1f} s behind the model's load"


def test_the_network_compiles_as_one_graph():
    """torch.compile traces the position table's resampling into the graph: the cache's lookup by data_ptr() (and
    is_inference()) broke the graph in three, each break a return to Python between GPU kernels."""
    net = random_model("vits", seed=0).eval()
    image = torch.randn(1, 3, 70, 98)
    with torch.inference_mode():
        net(image)  # the eager run fills the cache, as a stream's first batches would
        explanation = torch._dynamo.explain(net)(image)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def with_a_massive_residual(net, channel: int = 7, per_block: float = 8000.0):
    """Every block's MLP adds `per_block` to one channel of the residual stream (scale 1): after vits's 12 blocks it
    holds 96000, past float16's 65504, while no single layer's output leaves float16's range (DINOv2's outlier
    channels grow so through the blocks of a real checkpoint)."""
    with torch.no_grad():
        for block in net.image_encoder.blocks:
            block.mlp_scale[channel] = 1.0
            block.mlp.fc2.bias[channel] = per_block
    return net


@pytest.mark.parametrize("video", [False, True], ids=["depth-anything", "video-depth-anything"])
def test_half_precision_keeps_a_residual_past_65504_finite_as_autocast_does(video):
    """The predictor's reduced precision runs under autocast (a float32 residual stream and norms, as the original
    runs Video Depth Anything); with every weight cast to float16 the same network overflows to inf. float16 on the
    CPU here, through the same autocast the GPU path enters (autocast casts at the dispatcher, below the strict
    dtype rule's wrappers, which therefore do not apply: CUDA's autocast runs LayerNorm in float32 as the CPU's)."""
    from model.random_weights import random_video_model

    def network():
        net = random_video_model("vits", seed=2) if video else random_model("vits", seed=2)
        return with_a_massive_residual(net)

    image = torch.randn(1, 4, 3, 70, 98) if video else torch.randn(2, 3, 70, 98)
    peak = {}
    net = network()
    hook = net.image_encoder.blocks[-1].register_forward_hook(
        lambda module, inputs, output: peak.update(value=output.abs().max().item()))
    with torch.inference_mode():
        reference = net(image)
    hook.remove()
    assert 65504 < peak["value"] < float("inf") and torch.isfinite(reference).all()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        autocast_depth = net(image).float()
    assert torch.isfinite(autocast_depth).all()
    assert ((autocast_depth - reference).norm() / reference.norm()).item() < 1e-2
    cast = cast_weights_once(network(), torch.float16)
    with torch.inference_mode():
        cast_depth = cast(image.half()).float()
    assert not torch.isfinite(cast_depth).all()  # (what the GPU path did before: a residual of inf, depth NaN)
    # The predictor takes the autocast way unless told to cast: its weights stay float32
    predictor = DepthPredictor(random_model("vits", seed=2), PredictorOptions(precision="bfloat16", input_size=70))
    assert {p.dtype for p in predictor.net.parameters()} == {torch.float32} and not predictor._cast
