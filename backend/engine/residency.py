"""Which of a model's UNets sits on the GPU.

A model with a dedicated inpaint UNet has two UNets of the same size (SDXL: 5 GB each in half
precision), and a job uses one of them. Keeping both on the GPU spends the memory that ControlNets,
references and larger pictures need, so the idle one waits in RAM ("parked"). Its weights never
change, so each tensor keeps one page-locked host copy: leaving the GPU frees the device memory and
copies nothing; coming back is one host-to-device copy at PCIe speed.

Tensors are swapped through ``tensor.data``, so every Parameter keeps its identity: pipelines built
with ``from_pipe``, IP-Adapter processors and ``torch.compile``'s graphs (whose guards look at a
tensor's device, dtype and shape, not its address) all keep working on the same module objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.weak import WeakIdKeyDictionary


class Residency:
    """Keeps one UNet per model on ``device``; the others wait in (pinned, when on CUDA) host memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"  # page-locked copies: faster and asynchronous uploads
        self._host = WeakIdKeyDictionary()  # tensor -> its host copy; dies with the tensor

    def keep_only(self, active, modules: Iterable) -> None:
        """``active`` on the device, every other module of ``modules`` parked. Parks first, so the
        device never holds two UNets at once."""
        for module in modules:
            if module is not None and module is not active:
                self.park(module)
        self.unpark(active)

    def park(self, module) -> None:
        """Move ``module`` to its host copy (made on the first park, from wherever it is)."""
        for tensor in _tensors(module):
            host = self._host.get(tensor)
            if host is None:
                host = self._host[tensor] = self._host_copy(tensor)
            tensor.data = host

    def unpark(self, module) -> None:
        """Bring a parked ``module`` back to the device (tensors this class never parked stay put)."""
        for tensor in _tensors(module):
            host = self._host.get(tensor)
            if host is not None and _shares(tensor, host):
                # copy=True: on a CPU "device" too, the working copy is not the host copy
                tensor.data = host.to(self.device, non_blocking=self.pinned, copy=True)

    def is_parked(self, module) -> bool:
        return all(tensor in self._host and _shares(tensor, self._host[tensor]) for tensor in _tensors(module))

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        # Same strides as the original, so a channels_last UNet comes back channels_last.
        host = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device="cpu",
                                   pin_memory=self.pinned)
        host.copy_(tensor.detach())
        return host


def _tensors(module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _shares(tensor: torch.Tensor, host: torch.Tensor) -> bool:
    return tensor.device == host.device and tensor.data_ptr() == host.data_ptr()
