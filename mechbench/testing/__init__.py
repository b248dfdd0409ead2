"""Test aids a user can run too: the simulated CUDA device (:mod:`mechbench.testing.device`)."""

from mechbench.testing.device import SimulatedDeviceError, SimulatedGPU, active, simulated_gpu

__all__ = ["SimulatedDeviceError", "SimulatedGPU", "active", "simulated_gpu"]
