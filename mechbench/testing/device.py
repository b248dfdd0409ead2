"""A simulated CUDA device: real numerics on the CPU, while every tensor carries the device a GPU run would give it.

mechbench is run on GPUs by its users and developed on machines that have none. This module lets any command or
pytest run rehearse a GPU run on the CPU: with ``MECHBENCH_SIMULATED_GPU_GIB=80`` in the environment (or inside
``with simulated_gpu(80):``), ``--device cuda`` works on a CPU-only torch, and

- a tensor moved to ``cuda`` (``.to("cuda")``, ``.cuda()``, ``model.to("cuda")``, a factory with ``device="cuda"``)
  is a :class:`SimulatedCudaTensor`: its data and every kernel stay on the CPU (the same kernels as a CPU run, so
  the same numbers), but ``.device`` is ``cuda:0``, ``.is_cuda`` is true, and what is computed from it is on the
  simulated device too (gradients included);
- whatever a real GPU would refuse or make slow fails at once with a :class:`SimulatedDeviceError` that names the
  call site: an operation mixing a device tensor with a host tensor (anything but a 0-dim scalar, as on a real GPU:
  a model or adapter left partly on the host, an index tensor made without ``device=``, a cache kept on the other
  side), a device tensor handed to NumPy (``.numpy()``, ``np.asarray``) or turned into a Python list
  (``.tolist()``: one host sync per call, ruinous in a loop; real torch allows it, this simulation does not), so
  every move to the host is an explicit ``.cpu()``;
- with ``MECHBENCH_SIMULATED_GPUS=N`` (or ``simulated_gpu(80, count=N)``) there are N such GPUs, ``cuda:0`` to
  ``cuda:N-1``, each with its own memory: a tensor of one GPU mixed with a tensor of another fails as on real
  GPUs, so a model accelerate spreads over them (``--device-map``) shows any value left on the wrong device;
- ``torch.cuda.is_available()``, ``device_count``, ``mem_get_info``, ``memory_allocated``,
  ``max_memory_allocated``, ``reset_peak_memory_stats``, ``empty_cache``, ``get_device_properties`` ... answer as
  one GPU of the chosen size would. Allocated bytes are the bytes of the storages alive on the simulated device
  (each storage counted once, however many views share it; freed when its last tensor goes), and an allocation
  beyond the size raises ``torch.OutOfMemoryError`` as CUDA's allocator would.

How it works, and why this way: a CPU-only build of torch cannot hold a tensor whose C++ device is CUDA and still
run autograd over it (the autograd engine asks the CUDA runtime for streams), so the C++ device stays the CPU and
the Python face says CUDA: :class:`SimulatedCudaTensor` is a tensor subclass whose ``device`` property reports
``cuda:0``, and a :class:`torch.overrides.TorchFunctionMode` sees every torch call, turns ``device="cuda"`` into a
CPU allocation wrapped as a device tensor, keeps results of device tensors on the device, and checks each call's
tensors for the mistakes above. What it cannot see: operations inside C++ kernels (they see CPU tensors, as they
should), speed, and numerics that differ between GPU and CPU kernels (bfloat16 matmuls accumulate differently on
a GPU; mechbench's bfloat16 bounds are measured on the CPU, see docs/performance.md). It is never a GPU measurement:
:func:`active` is recorded in every results row, and the pytest plugin and the command line say so on their first
line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

#: The environment variable that turns the simulation on for any mechbench command or pytest run: its size in GiB.
ENV = "MECHBENCH_SIMULATED_GPU_GIB"
#: How many GPUs of that size (default 1): cuda:0 .. cuda:N-1, each with its own memory; a tensor on one mixed
#: with a tensor on another fails as on real GPUs (a device map's layers on two GPUs, a value left on the first)
COUNT_ENV = "MECHBENCH_SIMULATED_GPUS"
SYNC_LOAD_ENV = "HF_DEACTIVATE_ASYNC_LOAD"
CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
GIB = 1024**3
_NO_SUBCLASS = torch._C.DisableTorchFunctionSubclass
#: Frames in these directories are library internals; a violation names the first frame outside them.
_INTERNAL = (str(Path(torch.__file__).resolve().parent), str(Path(__file__).resolve()))


class SimulatedDeviceError(RuntimeError):
    """What a real GPU would refuse or punish, found on the simulated device; the message names the call site."""


class SimulatedCudaTensor(torch.Tensor):
    """A CPU tensor that reports the device it would have on a GPU (``cuda:0``; the subclass of GPU K,
    :func:`_class_for`, ``cuda:K``). Every torch call on it goes through :func:`_handle` (the mode's, or this
    class's ``__torch_function__`` where no mode is active)."""

    _index = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self._index)

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def is_cpu(self) -> bool:
        return False

    def get_device(self) -> int:
        return self._index

    def __repr__(self, *, tensor_contents=None) -> str:
        with _NO_SUBCLASS():
            text = torch.Tensor.__repr__(self.as_subclass(torch.Tensor))
        return text[:-1] + f", device='cuda:{self._index}' (simulated))"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _handle(func, args, kwargs or {})


_CLASSES: dict[int, type] = {0: SimulatedCudaTensor}


def _class_for(index: int) -> type:
    """The tensor class of simulated GPU ``index`` (the device lives in the type, see the module's docstring)."""
    if index not in _CLASSES:
        _CLASSES[index] = type(f"SimulatedCuda{index}Tensor", (SimulatedCudaTensor,), {"_index": index})
    return _CLASSES[index]


@dataclass
class SimulatedGPU:
    """The state of the simulated device: its size and the storages alive on it."""

    total_bytes: int
    name: str = ""
    allocated: int = 0
    peak: int = 0
    empty_cache_calls: int = 0
    _storages: dict = field(default_factory=dict)  # data_ptr -> nbytes of each storage alive on the device

    def __post_init__(self):
        self.name = self.name or f"mechbench simulated GPU ({self.total_bytes / GIB:g} GiB, CPU numerics)"

    @property
    def gib(self) -> float:
        return self.total_bytes / GIB

    def describe(self) -> dict:
        """What a results row records about the device: that it was simulated, its size and how many there are."""
        out = {"simulated": True, "gib": round(self.gib, 3), "name": self.name}
        return out | ({"gpus": len(_GPUS)} if len(_GPUS) > 1 else {})

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage as allocated on the device (once per storage), or raise CUDA's OOM."""
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        ptr = storage.data_ptr()
        if ptr in self._storages:
            return
        if self.allocated + nbytes > self.total_bytes:
            free = self.total_bytes - self.allocated
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {_size(nbytes)}. GPU 0 has a total capacity of "
                f"{_size(self.total_bytes)} of which {_size(free)} is free. Of the allocated memory "
                f"{_size(self.allocated)} is allocated by PyTorch. (The simulated GPU of {ENV}={self.gib:g}; "
                f"at {_call_site()}.)"
            )
        self._storages[ptr] = nbytes
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)
        weakref.finalize(storage, self._free, ptr)

    def _free(self, ptr: int) -> None:
        self.allocated -= self._storages.pop(ptr, 0)

    def reset_peak(self) -> None:
        self.peak = self.allocated


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 1024**2:.2f} MiB"


_ACTIVE: SimulatedGPU | None = None  # cuda:0
_GPUS: list[SimulatedGPU] = []  # cuda:0 .. cuda:N-1


def active() -> SimulatedGPU | None:
    """The simulated device in use, or None (a real device, or the CPU)."""
    return _ACTIVE


def device_metadata() -> dict:
    """What every results row says about the device its numbers came from."""
    if _ACTIVE is not None:
        return _ACTIVE.describe()
    if torch.cuda.is_available():
        return {
            "simulated": False,
            "name": torch.cuda.get_device_name(0),
            "gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 3),
        }
    return {"simulated": False, "name": "cpu"}


def banner() -> str | None:
    """The line a simulated run starts with, or None."""
    if _ACTIVE is None:
        return None
    devices = "cuda:0" if len(_GPUS) == 1 else f"cuda:0..cuda:{len(_GPUS) - 1} ({COUNT_ENV}={len(_GPUS)}) are"
    return (
        f"mechbench: SIMULATED GPU ({ENV}={_ACTIVE.gib:g}): {devices} is the CPU with device bookkeeping; "
        f"numbers are CPU numbers and times are not GPU times. Not a GPU measurement."
    )


# --- which calls the mode treats specially ---------------------------------------------------------------------------

#: Calls that take a host tensor beside a device tensor on purpose (an explicit copy, torch's own bookkeeping) or
#: read only its shape.
_MIXING_ALLOWED = {
    torch.Tensor.copy_,
    torch._has_compatible_shallow_copy_type,
    torch.Tensor.__setstate__,
    torch.Tensor.expand_as,
    torch.Tensor.view_as,
    torch.Tensor.reshape_as,
}
#: Conversions to host memory a real GPU refuses (numpy) or makes a per-call sync of (tolist): move with .cpu() first.
_TO_HOST = {torch.Tensor.numpy: ".numpy()", torch.Tensor.__array__: "np.asarray()", torch.Tensor.tolist: ".tolist()"}
_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}


def _call_site() -> str:
    """The innermost frame outside torch and this module: the line that made the call."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        path = str(Path(frame.filename).resolve()) if frame.filename and not frame.filename.startswith("<") else ""
        if path and not path.startswith(_INTERNAL) and "/contextlib.py" not in path and "/functools.py" not in path:
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
    return "an unknown call site"


def _tensors_in(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _tensors_in(y, out)
    elif isinstance(x, dict):
        for y in x.values():
            _tensors_in(y, out)
    return out


def _to_device(x, index: int = 0):
    """``x`` with every host tensor in it as a tensor of GPU ``index`` (a view of the same CPU data), counted as
    allocated there."""
    if isinstance(x, torch.Tensor):
        if isinstance(x, SimulatedCudaTensor):
            return x
        cls = _class_for(index)
        with _NO_SUBCLASS():  # a leaf stays a leaf (an optimizer's parameter); a result keeps its graph
            y = torch.Tensor._make_subclass(cls, x, x.requires_grad) if x.grad_fn is None else x.as_subclass(cls)
        if _GPUS:
            _GPUS[index].track(y)
        return y
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # torch.return_types / named tuples
        return type(x)(*(_to_device(y, index) for y in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(y, index) for y in x)
    return x


def _which() -> str:
    n = max(len(_GPUS), 1)
    return "the simulated GPU is cuda:0 only" if n == 1 else f"the simulated GPUs are cuda:0..cuda:{n - 1}"


def _gpu_index(device: torch.device) -> int:
    """The index of a cuda device, which must be one of the simulated GPUs."""
    index = device.index or 0
    if not 0 <= index < max(len(_GPUS), 1):
        raise SimulatedDeviceError(
            f"{_which()}; {device} does not exist ({COUNT_ENV} sets how many), at {_call_site()}"
        )
    return index


def _as_device(d) -> torch.device | None:
    if d is None:
        return None
    if isinstance(d, int):
        return torch.device("cuda", d)
    return d if isinstance(d, torch.device) else torch.device(d)


def _move(func, args, kwargs):
    """``.to(...)``, ``.cuda()``, ``.cpu()``: a move to the other side copies (new memory, as on a GPU); a move to
    the side a tensor is on returns it (or its dtype conversion)."""
    source = args[0]
    if func is torch.Tensor.cuda:
        device, dtype = _as_device(args[1] if len(args) > 1 else kwargs.get("device")) or CUDA, None
    elif func is torch.Tensor.cpu:
        device, dtype = CPU, None
    elif len(args) > 1 and isinstance(args[1], torch.Tensor):  # .to(other): other's device and dtype
        device, dtype = args[1].device, args[1].dtype
    else:  # a bare index is a cuda device (torch would ask the CPU build for its accelerator)
        rest = [torch.device("cuda", a) if isinstance(a, int) and not isinstance(a, bool) else a for a in args[1:]]
        if isinstance(kwargs.get("device"), int):
            kwargs = {**kwargs, "device": torch.device("cuda", kwargs["device"])}
        device, dtype, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
    on_device = isinstance(source, SimulatedCudaTensor)
    to_device = device.type == "cuda" if device is not None else on_device
    if device is not None and device.type not in ("cuda", "cpu"):
        raise SimulatedDeviceError(
            f"the simulated GPU moves tensors between cpu and cuda only, not to {device}; at {_call_site()}"
        )
    source_index = source._index if on_device else None
    index = _gpu_index(device) if device is not None and device.type == "cuda" else source_index
    with _NO_SUBCLASS():
        plain = source.as_subclass(torch.Tensor) if on_device else source
        moved = to_device != on_device or (to_device and index != source_index)  # host<->GPU, or GPU to GPU
        out = plain.to(dtype=dtype, copy=moved) if dtype is not None else (plain.clone() if moved else plain)
    if not to_device:
        return out
    return source if out is plain else _to_device(out, index)


def _handle(func, args, kwargs):
    if func is torch.device and len(args) == 1 and isinstance(args[0], int) and not kwargs:
        return torch.device("cuda", args[0])  # a bare index is the accelerator's (accelerate's device maps use them)
    if func in _MOVES:
        return _move(func, args, kwargs)
    if func is torch.as_tensor and args and isinstance(args[0], torch.Tensor):  # of a tensor: a move, graph kept
        to = {k: v for k, v in kwargs.items() if k in ("dtype", "device") and v is not None}
        return _move(torch.Tensor.to, (args[0],), to) if to else args[0]
    if func is torch.Tensor.pin_memory:  # page-locked host memory for fast copies: plain host memory here
        with _NO_SUBCLASS():
            return args[0].clone()
    if kwargs.get("pin_memory"):
        kwargs = {**kwargs, "pin_memory": False}
    tensors = _tensors_in(kwargs, _tensors_in(args, []))
    on_device = [t for t in tensors if isinstance(t, SimulatedCudaTensor)]
    if on_device and func in _TO_HOST:
        raise SimulatedDeviceError(
            f"{_TO_HOST[func]} of a cuda tensor {tuple(on_device[0].shape)}: a GPU tensor must be moved to the host "
            f"first ({'torch refuses it' if func is not torch.Tensor.tolist else 'one host sync per call'}); call "
            f".cpu() once where the values are needed, at {_call_site()}"
        )
    device = _as_device(kwargs.get("device"))
    index = on_device[0]._index if on_device else 0
    if device is not None and device.type == "cuda":
        index = _gpu_index(device)
        kwargs = {**kwargs, "device": CPU}
    if on_device and func not in _MIXING_ALLOWED:
        others = {t._index for t in on_device} - {on_device[0]._index}
        if others:
            raise SimulatedDeviceError(
                f"{getattr(func, '__qualname__', func)} mixes a tensor on cuda:{on_device[0]._index} with one on "
                f"cuda:{min(others)}: on GPUs this is 'Expected all tensors to be on the same device'. Move the value "
                f"to the device of the module that uses it, at {_call_site()}"
            )
        for t in tensors:
            if not isinstance(t, SimulatedCudaTensor) and t.dim() > 0:
                raise SimulatedDeviceError(
                    f"{getattr(func, '__qualname__', func)} mixes a cuda tensor {tuple(on_device[0].shape)} with a cpu "
                    f"tensor {tuple(t.shape)} ({t.dtype}): on a GPU this is 'Expected all tensors to be on the same "
                    f"device' (or a host-to-device copy per call for an index). Create it with device= or move it "
                    f"once, at {_call_site()}"
                )
    with _NO_SUBCLASS():
        out = func(*args, **kwargs)
    if (device is not None and device.type == "cuda") or (on_device and device is None):
        return _to_device(out, index)
    return out


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return _handle(func, args, kwargs or {})


# --- torch.cuda as one GPU of the chosen size would answer ------------------------------------------------------------


@dataclass(frozen=True)
class _Properties:
    name: str
    total_memory: int
    major: int = 8
    minor: int = 0
    multi_processor_count: int = 108
    is_integrated: bool = False
    is_multi_gpu_board: bool = False


def _index(device=None) -> int:
    if device is None:
        return 0
    index = device if isinstance(device, int) else _as_device(device).index or 0
    if not 0 <= index < len(_GPUS):
        raise SimulatedDeviceError(f"{_which()}; device {device} does not exist ({COUNT_ENV} sets how many)")
    return index


def _cuda_api(gpus: list[SimulatedGPU]) -> dict:
    def query(value):  # a query that takes an optional device, which must be one of the simulated GPUs
        def answer(device=None, *_, **__):
            return value(gpus[_index(device)])

        return answer

    def empty_cache():
        for gpu in gpus:
            gpu.empty_cache_calls += 1

    return {
        "is_available": lambda: True,
        "device_count": lambda: len(gpus),
        "is_initialized": lambda: True,
        "_lazy_init": lambda: None,
        "init": lambda: None,
        "current_device": lambda: 0,
        "set_device": query(lambda gpu: None),
        "synchronize": query(lambda gpu: None),
        "get_device_name": query(lambda gpu: gpu.name),
        "get_device_capability": query(lambda gpu: (8, 0)),
        "get_device_properties": query(lambda gpu: _Properties(gpu.name, gpu.total_bytes)),
        "is_bf16_supported": lambda including_emulation=True: True,
        "mem_get_info": query(lambda gpu: (gpu.total_bytes - gpu.allocated, gpu.total_bytes)),
        "memory_allocated": query(lambda gpu: gpu.allocated),
        "memory_reserved": query(lambda gpu: gpu.allocated),
        "max_memory_allocated": query(lambda gpu: gpu.peak),
        "max_memory_reserved": query(lambda gpu: gpu.peak),
        "reset_peak_memory_stats": query(lambda gpu: gpu.reset_peak()),
        "empty_cache": empty_cache,
        # the CPU generator drives every random draw of a simulated run (so it gives the CPU run's numbers)
        "manual_seed": lambda seed: None,
        "manual_seed_all": lambda seed: None,
        "seed": lambda: None,
        "seed_all": lambda: None,
    }


@contextlib.contextmanager
def simulated_gpu(gib: float = 80, count: int = 1):
    """Within the block, ``cuda`` is a simulated GPU of ``gib`` GiB, or ``count`` of them (cuda:0 ..), each of its
    own size (see the module's docstring); yields cuda:0's state."""
    gpu = activate(gib, count)
    try:
        yield gpu
    finally:
        deactivate()


_SAVED: list = []


def _loading_to_device(load):
    """``torch.load`` with ``map_location`` on cuda (peft loads a pickled adapter so): CUDA storages cannot exist on
    a CPU build, so the file loads to the host and each tensor becomes a device tensor, as it would arrive on a GPU."""

    def _cuda_location(location) -> bool:
        if isinstance(location, dict):
            return any(_cuda_location(v) for v in location.values())
        if isinstance(location, (str, torch.device, int)):
            return _as_device(location).type == "cuda"
        return False

    def device_load(f, map_location=None, *args, **kwargs):
        if not _cuda_location(map_location):
            return load(f, map_location, *args, **kwargs)
        from torch.utils._pytree import tree_map

        index = _first_cuda_index(map_location)
        return tree_map(
            lambda x: _to_device(x, index) if isinstance(x, torch.Tensor) else x, load(f, "cpu", *args, **kwargs)
        )

    def _first_cuda_index(location) -> int:
        if isinstance(location, dict):
            return next((_first_cuda_index(v) for v in location.values() if _cuda_location(v)), 0)
        return _gpu_index(_as_device(location))

    return device_load


def _swapping_apply(module_apply):
    """``Module._apply`` (behind ``.to``, ``.cuda``, ``.float`` ...) with parameters swapped in place: on a real GPU
    ``model.to("cuda")`` keeps each Parameter object and moves its data; here the device lives in the tensor's type,
    so the Parameter object itself must become a device tensor (torch's swap_tensors route; only while a module
    converts, so that load_state_dict keeps copying as it does on a GPU)."""

    def _apply(self, fn, recurse=True):
        if torch.__future__.get_swap_module_params_on_conversion():
            return module_apply(self, fn, recurse)
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            return module_apply(self, fn, recurse)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(False)

    return _apply


def activate(gib: float, count: int = 1) -> SimulatedGPU:
    """Turn the simulation on for this process (the environment variable's route calls this at import): ``count``
    GPUs of ``gib`` GiB each; returns cuda:0's state."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise SimulatedDeviceError("a simulated GPU is already active in this process")
    if torch.cuda.is_available():
        raise SimulatedDeviceError(
            f"{ENV} is set, but torch sees a real CUDA GPU here ({torch.cuda.get_device_name(0)}): the simulation "
            f"stands in for a GPU you do not have; unset {ENV} to run on this one"
        )
    if not gib > 0:
        raise SimulatedDeviceError(f"{ENV}={gib!r}: the simulated GPU's size in GiB must be a positive number, e.g. 80")
    if not (isinstance(count, int) and count >= 1):
        raise SimulatedDeviceError(f"{COUNT_ENV}={count!r}: the number of simulated GPUs must be a whole number >= 1")
    _GPUS[:] = [SimulatedGPU(total_bytes=int(gib * GIB)) for _ in range(count)]
    gpu = _GPUS[0]
    if count > 1:
        for k, g in enumerate(_GPUS):
            g.name = f"mechbench simulated GPU {k} of {count} ({gib:g} GiB, CPU numerics)"
    api = _cuda_api(_GPUS)
    saved = {name: getattr(torch.cuda, name, None) for name in api}
    for name, fn in api.items():
        setattr(torch.cuda, name, fn)
    module_apply, load = torch.nn.Module._apply, torch.load
    torch.nn.Module._apply = _swapping_apply(module_apply)
    torch.load = torch.serialization.load = _loading_to_device(load)
    mode = _Mode()
    mode.__enter__()
    # torch function modes are per thread: transformers' threaded loading (a device map's weights going straight to
    # their GPUs) would run outside the simulation, so it loads in this thread while the simulation is on
    async_load = os.environ.get(SYNC_LOAD_ENV)
    os.environ[SYNC_LOAD_ENV] = "1"
    _SAVED.append((saved, module_apply, load, mode, async_load))
    _ACTIVE = gpu
    return gpu


def deactivate() -> None:
    global _ACTIVE
    if not _SAVED:
        return
    saved, module_apply, load, mode, async_load = _SAVED.pop()
    mode.__exit__(None, None, None)
    if async_load is None:
        os.environ.pop(SYNC_LOAD_ENV, None)
    else:
        os.environ[SYNC_LOAD_ENV] = async_load
    torch.nn.Module._apply = module_apply
    torch.load = torch.serialization.load = load
    for name, fn in saved.items():
        if fn is None:
            delattr(torch.cuda, name)
        else:
            setattr(torch.cuda, name, fn)
    _ACTIVE = None
    _GPUS.clear()


def activate_from_environment() -> SimulatedGPU | None:
    """``MECHBENCH_SIMULATED_GPU_GIB=<size>`` in the environment turns the simulation on (once per process)."""
    value = os.environ.get(ENV, "").strip()
    if not value or _ACTIVE is not None:
        return _ACTIVE
    count = os.environ.get(COUNT_ENV, "1").strip() or "1"
    try:  # a bad setting ends the process with the message alone: it is read before any command has started
        gpu = activate(float(value), int(count) if count.isdigit() else count)
    except ValueError:
        raise SystemExit(
            f"mechbench: {ENV}={value!r}: expected the simulated GPU's size in GiB, e.g. {ENV}=80"
        ) from None
    except SimulatedDeviceError as e:
        raise SystemExit(f"mechbench: {e}") from None
    print(banner(), file=sys.stderr)
    return gpu
