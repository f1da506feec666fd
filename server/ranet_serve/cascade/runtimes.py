"""Stage runtimes: "run stage k on these named tensors", for onnxruntime, TorchScript and eager PyTorch.

Runtimes know nothing of requests, thresholds or HTTP. State crosses the interface in the runtime's
own array type (`runtime.arrays`, see `arrays.py`): numpy for onnxruntime on the CPU, torch tensors on
the runtime's device otherwise, so the executor gathers surviving images without converting anything
and only logits are read on the host.

On the CPU, the onnxruntime runtime's two session sets (multi-threaded, and single-threaded for small
batches) read one copy of each stage's weights (`OnnxRuntime._load_sharing_sessions`).

The onnxruntime runtime on CUDA binds torch-owned device buffers as the stages' inputs and outputs
(I/O binding), so state tensors stay on the GPU between stages; its stages run on a stream the
runtime owns, ordered against torch's with events (`devices.StreamOrder`). The same binding code runs
on the CPU when asked (`io_binding=True`), which is how the tests here exercise what the GPU runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from ranet_serve.cascade.arrays import NumpyArrays, StageArray, StageArrays, TorchArrays
from ranet_serve.cascade.devices import StreamOrder, device_index, parse_device
from ranet_serve.cascade.full_graph import (
    FullGraphSetting,
    compose_full_graph,
    full_graph_output,
    wants_full_graph,
)
from ranet_serve.cascade.threads import SINGLE_THREAD_BELOW
from ranet_serve.errors import BundleError, StageExecutionError
from ranet_serve.export.bundle import Bundle

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

Backend = Literal["onnxruntime", "torchscript", "eager"]
CudnnConvSearch = Literal["exhaustive", "heuristic", "default"]


class StageRuntime(ABC):
    """Runs the stages of one bundle. Called only from the executor's worker thread."""

    backend: str
    device: torch.device
    arrays: StageArrays  # how this runtime holds state between stages

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.manifest = bundle.manifest

    # Whether `run_full` is available: one graph from the input image to the last exit's logits.
    has_full_graph: bool = False

    @abstractmethod
    def run(self, stage: int, inputs: dict[str, StageArray]) -> dict[str, StageArray]:
        """Run stage `stage` on a batch; return every output named in the manifest."""

    def run_full(self, image: StageArray) -> StageArray:
        """The last exit's logits of a batch of stage-0 input, in one call (see `full_graph.py`)."""
        raise NotImplementedError(f"{self.backend} has no full-depth graph")

    def describe(self) -> str:
        return f"{self.backend} on {self.device}"


class OnnxRuntime(StageRuntime):
    backend = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        threads: int = 0,
        optimization: Literal["disable", "basic", "extended", "all"] = "all",
        single_thread_below: int = SINGLE_THREAD_BELOW,
        io_binding: bool | None = None,
        cudnn_conv_search: CudnnConvSearch = "heuristic",
        full_graph: bool = False,
    ):
        """`full_graph`: also build the composed full-depth graph (`run_full`, see `full_graph.py`).
        `io_binding`: bind torch tensors as the stages' inputs and outputs (None: on CUDA only;
        it cannot be turned off there). On the CPU plain numpy calls are cheaper (see arrays.py), so
        binding there serves the tests: it is the GPU's code path, run where there is no GPU.
        `cudnn_conv_search`: how the CUDA provider picks convolution algorithms per new input shape.
        """
        super().__init__(bundle)
        import onnxruntime as ort

        self._ort = ort
        self.device = parse_device(device)
        self._cuda = self.device.type == "cuda"
        if self._cuda and io_binding is False:
            raise ValueError("onnxruntime on CUDA always binds its inputs and outputs (io_binding)")
        self.io_binding = self._cuda if io_binding is None else io_binding
        self.cudnn_conv_search = cudnn_conv_search
        self.arrays = TorchArrays(self.device) if self.io_binding else NumpyArrays()
        self._stream = StreamOrder(self.device)
        self.threads = threads
        # Small batches on the CPU run on a second, single-threaded set of sessions (see
        # SINGLE_THREAD_BELOW); pointless where the runtime is single-threaded already or on CUDA.
        self.single_thread_below = 0 if self._cuda or threads == 1 else max(single_thread_below, 0)
        # Per stage, by name, the weights both session sets read in place (empty where there is one
        # set). Held here because the sessions use this memory and do not keep it alive themselves.
        self.shared_initializers: list[dict[str, np.ndarray]] = []
        self._shared_values: list[dict[str, onnxruntime.OrtValue]] = []
        if self.single_thread_below > 1:
            self.sessions, small = self._load_sharing_sessions(optimization, (threads, 1))
        else:
            options = session_options(threads, optimization, shared_cpu_arena=not self._cuda)
            self.sessions = small = self._load_sessions(options)
        # Per stage: the session and its I/O names as the lists onnxruntime takes, built once because
        # at batch 1 every microsecond of Python around the six calls shows in the split cost.
        self._plans = self._stage_plans(self.sessions)
        self._small_plans = self._plans if small is self.sessions else self._stage_plans(small)
        # The composed full-depth graph, in the same thread sets as the stages (None: not built).
        self._full: onnxruntime.InferenceSession | None = None
        self._full_small: onnxruntime.InferenceSession | None = None
        self._full_input = self.manifest.stages[0].inputs[0]
        self._full_output = full_graph_output(bundle)
        if full_graph:
            self._load_full_graph(optimization, threads)

    def _load_full_graph(
        self, optimization: Literal["disable", "basic", "extended", "all"], threads: int
    ) -> None:
        """Build the composed full-depth graph's sessions; on failure, log it and serve without them:
        the graph only speeds up full-depth batches, and must never keep a bundle from serving."""
        try:
            model = compose_full_graph(self.bundle)
            full = self._ort.InferenceSession(
                model,
                sess_options=session_options(threads, optimization, shared_cpu_arena=not self._cuda),
                providers=self._providers(),
            )
            small = full
            if self.single_thread_below > 1:
                small = self._ort.InferenceSession(
                    model, sess_options=session_options(1, optimization), providers=self._providers()
                )
        except Exception as exc:
            logger.warning(
                "bundle %s/%s: no full-depth graph, full-depth batches run stage by stage (%s)",
                self.manifest.name,
                self.manifest.version,
                exc,
            )
            return
        self._full, self._full_small = full, small
        self.has_full_graph = True

    def run_full(self, image: StageArray) -> StageArray:
        session = self._full_small if image.shape[0] < self.single_thread_below else self._full
        if session is None:
            return super().run_full(image)
        name = self._full_output
        try:
            if self.io_binding:
                return self._run_bound(session, (self._full_input,), (name,), {self._full_input: image})[name]
            return session.run([name], {self._full_input: image})[0]
        except Exception as exc:
            last = len(self.manifest.stages) - 1
            raise StageExecutionError(
                f"the full-depth graph failed in onnxruntime: {exc}", stage=last
            ) from exc

    def _providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if not self._cuda:
            return ["CPUExecutionProvider"]
        cuda_options = {
            "device_id": str(device_index(self.device)),
            # The stages run on the runtime's own stream, ordered against torch's (StreamOrder).
            "user_compute_stream": str(self._stream.handle),
            "cudnn_conv_algo_search": self.cudnn_conv_search.upper(),
        }
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]

    def _load_sessions(self, options: onnxruntime.SessionOptions) -> list[onnxruntime.InferenceSession]:
        providers = self._providers()
        sessions = []
        for index in range(len(self.manifest.stages)):
            path = self.bundle.stage_file(index, "onnx")
            try:
                session = self._ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:
                raise BundleError(f"{path}: onnxruntime cannot load it ({exc})", file=str(path)) from exc
            if self._cuda and "CUDAExecutionProvider" not in session.get_providers():
                # onnxruntime-gpu lists CUDA even without a GPU; only the created session tells the truth.
                raise BundleError(
                    "onnxruntime could not create a CUDA session (no GPU or no onnxruntime-gpu)"
                )
            sessions.append(session)
        return sessions

    def _load_sharing_sessions(
        self, optimization: Literal["disable", "basic", "extended", "all"], thread_counts: tuple[int, int]
    ) -> tuple[list[onnxruntime.InferenceSession], list[onnxruntime.InferenceSession]]:
        """Two CPU session sets, one per entry of `thread_counts`, holding each stage's weights once.

        Each session built from a stage file keeps its own copy of the weights: on imagenet-model1
        (131 M parameters, 0.53 GB of weights) building the runtime added 1.22-1.25 GB resident with
        two sets, 0.60-0.63 GB with one. onnxruntime takes shared weights as initializers added to the
        session options (memory it reads in place), but optimisation level `all` rewrites the
        convolutions' weights into its blocked NCHWc layout as new tensors per session: sharing the
        file's initializers still added 1.46 GB. Hence: optimise each stage once, write the
        optimised graph to memory (`_optimized_stage`), read its initializers, which are what the
        kernels run on, and build both sessions from that graph with them and no further
        optimisation: 0.66-0.69 GB added. The same kernels, so the same outputs bit for bit and the
        same speed as sessions built from the stage file; loading takes 1-1.5 s longer (3.4-3.9 s
        instead of 2.3-2.5 s on the 2-core host).
        """
        sets: tuple[list[onnxruntime.InferenceSession], list[onnxruntime.InferenceSession]] = ([], [])
        for index in range(len(self.manifest.stages)):
            path = self.bundle.stage_file(index, "onnx")
            try:
                with _optimized_stage(self._ort, path, optimization) as optimized_path:
                    arrays = _read_initializers(optimized_path)
                    values = {name: self._ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
                    for sessions, threads in zip(sets, thread_counts, strict=True):
                        options = session_options(threads, "disable", shared_cpu_arena=True)
                        for name, value in values.items():
                            options.add_initializer(name, value)
                        sessions.append(
                            self._ort.InferenceSession(
                                optimized_path, sess_options=options, providers=["CPUExecutionProvider"]
                            )
                        )
            except Exception as exc:
                raise BundleError(f"{path}: onnxruntime cannot load it ({exc})", file=str(path)) from exc
            self.shared_initializers.append(arrays)
            self._shared_values.append(values)
        return sets

    def _stage_plans(
        self, sessions: list[onnxruntime.InferenceSession]
    ) -> list[tuple[onnxruntime.InferenceSession, tuple[str, ...], list[str]]]:
        return [
            (session, tuple(spec.inputs), list(spec.outputs))
            for session, spec in zip(sessions, self.manifest.stages, strict=True)
        ]

    def threads_for(self, batch: int) -> int:
        """Intra-op threads a batch of `batch` images runs with (0: onnxruntime's default)."""
        return 1 if batch < self.single_thread_below else self.threads

    def sessions_for(self, batch: int) -> list[onnxruntime.InferenceSession]:
        """The stage sessions a batch of `batch` images runs on."""
        return [session for session, _, _ in self._plans_for(batch)]

    def _plans_for(self, batch: int) -> list[tuple[onnxruntime.InferenceSession, tuple[str, ...], list[str]]]:
        # On CUDA and single-threaded runtimes single_thread_below is 0: always the one set.
        return self._small_plans if batch < self.single_thread_below else self._plans

    def run(self, stage: int, inputs: dict[str, StageArray]) -> dict[str, StageArray]:
        batch = next(iter(inputs.values())).shape[0]
        session, input_names, output_names = self._plans_for(batch)[stage]
        try:
            if self.io_binding:
                return self._run_bound(session, input_names, tuple(output_names), inputs)
            # numpy in, onnxruntime's own arrays out, handed on as they are to the next stage.
            results = session.run(output_names, {name: inputs[name] for name in input_names})
        except Exception as exc:
            raise StageExecutionError(f"stage {stage} failed in onnxruntime: {exc}", stage=stage) from exc
        return dict(zip(output_names, results, strict=True))

    def describe(self) -> str:
        full = ", full-depth graph" if self.has_full_graph else ""
        if self._cuda:
            return f"{super().describe()}, I/O binding, cuDNN search {self.cudnn_conv_search}{full}"
        threads = self.threads or "default"
        if self.single_thread_below > 1:
            return f"{super().describe()}, {threads} threads (1 below batch {self.single_thread_below}){full}"
        return f"{super().describe()}, {threads} threads{full}"

    def _run_bound(
        self,
        session: onnxruntime.InferenceSession,
        input_names: tuple[str, ...],
        output_names: tuple[str, ...],
        inputs: dict[str, StageArray],
    ) -> dict[str, StageArray]:
        """Bind torch-owned buffers on the runtime's device as inputs and outputs, and run.

        Nothing is copied: onnxruntime reads the inputs where torch wrote them and writes the outputs
        into tensors allocated here, so the next stage (and the survivor gathers) use them in place.
        Outputs are allocated before the run on torch's current stream; `StreamOrder` makes the
        runtime's stream wait for that stream before the run and that stream wait for it after.
        """
        device_type, index = self.device.type, device_index(self.device)  # as onnxruntime names them
        binding = session.io_binding()
        batch = next(iter(inputs.values())).shape[0]
        held: list[Tensor] = []  # contiguous copies stay referenced until the run is ordered
        for name in input_names:
            tensor = inputs[name]
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name}: a bound runtime takes torch tensors, got {type(tensor).__name__}")
            if tensor.device != self.device or tensor.dtype != torch.float32:
                raise TypeError(
                    f"{name}: expected float32 on {self.device}, got {tensor.dtype} on {tensor.device}"
                )
            tensor = tensor.contiguous()
            held.append(tensor)
            binding.bind_input(name, device_type, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        outputs: dict[str, StageArray] = {}
        for name in output_names:
            shape = (batch, *self._output_shape(name))
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, device_type, index, np.float32, shape, out.data_ptr())
            outputs[name] = out
        with self._stream.ordered():
            session.run_with_iobinding(binding)
        return outputs

    def _output_shape(self, name: str) -> tuple[int, ...]:
        if name.startswith("logits_"):
            return (self.manifest.config.num_classes,)
        return self.manifest.tensor(name).shape


def session_options(
    threads: int = 0,
    optimization: Literal["disable", "basic", "extended", "all"] = "all",
    shared_cpu_arena: bool = True,
) -> onnxruntime.SessionOptions:
    """The onnxruntime SessionOptions every stage session uses.

    Public so that a benchmark can give a whole-model session exactly the same options: the split cost
    is only meaningful between graphs run under the same optimisation level, threading and memory.

    `shared_cpu_arena`: allocate from one process-wide CPU arena instead of one arena per session.
    With an arena per stage, every stage's buffers live in memory of their own that the other stages
    have since pushed out of the caches; one arena hands the next stage the blocks the previous one
    just freed. Measured on the default model, batch 64, 2 threads: bare stage calls / monolithic
    1.08-1.10 with an arena per session, 1.04-1.05 with the shared one (no change at batch 1).
    """
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Several sessions with spinning thread pools fight over few cores (platform notes: 41-44 us
    # per stage boundary with spinning, 15 us without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if shared_cpu_arena and _register_shared_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


@contextmanager
def _optimized_stage(
    ort: ModuleType, path: Path, optimization: Literal["disable", "basic", "extended", "all"]
) -> Iterator[str]:
    """Optimise the stage at `path` once; yield the path of the optimised graph.

    The graph goes to an anonymous in-memory file (memfd), not to disk: a stage of a large model is
    bigger than a container's writable /tmp (64 MiB in deploy/k8s), and nothing of it should outlive
    the load. Its blocked-layout convolutions are specific to this CPU, which is where it is used.
    """
    if hasattr(os, "memfd_create"):  # Linux
        descriptor = os.memfd_create(f"ranet-{path.stem}", os.MFD_CLOEXEC)
        optimized_path = f"/proc/self/fd/{descriptor}"
    else:  # elsewhere a temporary file, removed after the sessions are built
        descriptor, optimized_path = tempfile.mkstemp(prefix=f"ranet-{path.stem}-", suffix=".onnx")
    try:
        # An arena of its own, released with this throwaway session, not the shared one that stays.
        options = session_options(1, optimization, shared_cpu_arena=False)
        options.optimized_model_filepath = optimized_path
        # Saving a graph with NCHWc nodes warns that it suits only this hardware: it is used only here.
        options.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        yield optimized_path
    finally:
        os.close(descriptor)
        if not optimized_path.startswith("/proc/"):
            os.unlink(optimized_path)


# Shared weights start on a 64-byte boundary, as onnxruntime's own allocator places them: numpy's
# large allocations are only 16-byte aligned, and AVX-512 kernels read aligned 64-byte lines.
ALIGNMENT_BYTES = 64


def _read_initializers(path: str) -> dict[str, np.ndarray]:
    """The inline numeric initializers of the ONNX model at `path` by name, as writable, C-contiguous
    arrays aligned to ALIGNMENT_BYTES that own their memory (nothing refers to the model afterwards).

    Only tensors stored inline as `raw_data` in one of numpy's own bool, integer or float types are
    read: onnxruntime writes every initializer it serialises that way, and `OrtValue.ortvalue_from_numpy`
    takes those types. Anything else (typed lists, strings, external data, ml_dtypes' narrow floats) is
    left out, and the session loads that tensor from the graph itself.
    """
    import onnx
    from onnx import TensorProto, external_data_helper, numpy_helper

    shareable = {
        TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL,
        TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    }  # fmt: skip
    # The parsed model holds a copy of every weight: at most this function's lifetime (a large
    # model's stage is over 100 MB), then only the aligned arrays remain.
    model = onnx.load(path, load_external_data=False)
    return {
        tensor.name: _aligned_copy(numpy_helper.to_array(tensor))
        for tensor in model.graph.initializer
        if tensor.data_type in shareable
        and tensor.HasField("raw_data")
        and not external_data_helper.uses_external_data(tensor)
    }


def _aligned_copy(array: np.ndarray) -> np.ndarray:
    """A writable, C-contiguous copy of `array` whose data starts on an ALIGNMENT_BYTES boundary."""
    buffer = np.empty(array.nbytes + ALIGNMENT_BYTES, dtype=np.uint8)
    offset = -buffer.ctypes.data % ALIGNMENT_BYTES
    copy = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


_shared_arena_lock = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet; then whether onnxruntime accepted it


def _register_shared_cpu_arena() -> bool:
    """Register the process-wide CPU arena once; False (per-session arenas) if onnxruntime refuses."""
    global _shared_arena
    import onnxruntime as ort

    with _shared_arena_lock:
        if _shared_arena is None:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            try:
                ort.create_and_register_allocator(info, None)
                _shared_arena = True
            except Exception as exc:  # an older or differently built onnxruntime: keep per-session arenas
                logger.warning("onnxruntime: no shared CPU arena (%s); using one per session", exc)
                _shared_arena = False
        return _shared_arena


class TorchScriptRuntime(StageRuntime):
    backend = "torchscript"

    def __init__(self, bundle: Bundle, device: str = "cpu"):
        super().__init__(bundle)
        self.device = parse_device(device)
        self.arrays = TorchArrays(self.device)
        self.modules = []
        for index in range(len(self.manifest.stages)):
            path = bundle.stage_file(index, "torchscript")
            try:
                self.modules.append(torch.jit.load(str(path), map_location=self.device).eval())
            except Exception as exc:
                raise BundleError(f"{path}: TorchScript cannot load it ({exc})", file=str(path)) from exc

    @torch.no_grad()
    def run(self, stage: int, inputs: dict[str, StageArray]) -> dict[str, StageArray]:
        spec = self.manifest.stages[stage]
        try:
            outputs = self.modules[stage](*(inputs[name] for name in spec.inputs))
        except Exception as exc:
            raise StageExecutionError(f"stage {stage} failed in TorchScript: {exc}", stage=stage) from exc
        return dict(zip(spec.outputs, outputs, strict=True))


class EagerRuntime(StageRuntime):
    """PyTorch eager stages built from the bundle's checkpoint: the reference for parity tests."""

    backend = "eager"

    def __init__(self, bundle: Bundle, device: str = "cpu"):
        super().__init__(bundle)
        from ranet_serve.model.stages import build_stages

        self.device = parse_device(device)
        self.arrays = TorchArrays(self.device)
        self.model = bundle.load_model().to(self.device)
        self.stages = build_stages(self.model)

    @torch.no_grad()
    def run(self, stage: int, inputs: dict[str, StageArray]) -> dict[str, StageArray]:
        module = self.stages[stage]
        outputs = module(*(inputs[name] for name in module.spec.inputs))
        return dict(zip(module.spec.outputs, outputs, strict=True))


def resolve_device(requested: str, backend: str) -> str:
    """`auto` picks CUDA when the backend can use it here, else CPU; anything else is kept as named."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return "cpu"
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return "cuda"


def create_runtime(
    bundle: Bundle,
    backend: str = "onnxruntime",
    device: str = "auto",
    threads: int = 0,
    single_thread_below: int = SINGLE_THREAD_BELOW,
    io_binding: bool | None = None,
    cudnn_conv_search: CudnnConvSearch = "heuristic",
    full_graph: FullGraphSetting = "off",
) -> StageRuntime:
    """Build the runtime a setting names; log what was chosen.

    `io_binding`, `cudnn_conv_search` and `full_graph` (see `full_graph.wants_full_graph`) concern
    onnxruntime only (see `OnnxRuntime`).
    """
    chosen = resolve_device(device, backend)
    runtime: StageRuntime
    if backend == "onnxruntime":
        runtime = OnnxRuntime(
            bundle,
            device=chosen,
            threads=threads,
            single_thread_below=single_thread_below,
            io_binding=io_binding,
            cudnn_conv_search=cudnn_conv_search,
            full_graph=wants_full_graph(bundle, full_graph),
        )
    elif backend == "torchscript":
        if threads > 0:
            torch.set_num_threads(threads)
        runtime = TorchScriptRuntime(bundle, device=chosen)
    elif backend == "eager":
        runtime = EagerRuntime(bundle, device=chosen)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose onnxruntime, torchscript or eager")
    logger.info("bundle %s/%s: %s", bundle.manifest.name, bundle.manifest.version, runtime.describe())
    return runtime
