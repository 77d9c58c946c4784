"""A LocalCluster whose workers each get their own ``CUDA_VISIBLE_DEVICES``."""

from __future__ import annotations

import collections
import os
from typing import Any

from distributed import Client, LocalCluster
from distributed.system import MEMORY_LIMIT


def warm_up() -> int:
    """Set torch's threads and evaluate a tiny model once, so that the engine's imports and
    first-call costs (torch kernels, xarray, the FLOP counter: seconds on a busy machine) are
    paid while the cluster starts rather than by the first task. Not a preload: a worker that
    restarts after a crash must register with the scheduler quickly (within Dask's
    ``lost-worker-timeout``, 15 s), so it pays these costs in its first task instead."""
    import torch

    from landscape.core.evaluate import evaluate
    from landscape.core.family import AffineFamily

    torch.set_num_threads(int(os.environ.get("LANDSCAPE_TORCH_THREADS", "1")))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = (torch.zeros(4, 4), torch.zeros(4, dtype=torch.long))
    evaluate(model, AffineFamily.line(state, state, 3), data, device="cpu", progress=False)
    return torch.get_num_threads()


class DeviceCluster(LocalCluster):
    """One worker process per entry of ``devices`` (a GPU id, or ``""`` for a CPU worker)."""

    def __init__(self, devices: list[str], *, torch_threads: int, dashboard: bool) -> None:
        self.devices = list(devices)
        threads = str(torch_threads)
        super().__init__(
            n_workers=0,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":8787" if dashboard else None,
            memory_limit=MEMORY_LIMIT // max(1, len(self.devices)),
            # Read by OpenMP when torch is imported in the worker (also after a restart).
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "LANDSCAPE_TORCH_THREADS": threads},
        )
        try:
            self.scale(len(self.devices))
            self.wait_for_workers(len(self.devices))
            with Client(self, set_as_default=False) as client:
                client.run(warm_up)
        except BaseException:
            self.close()
            raise

    def new_worker_spec(self) -> dict[str, Any]:
        spec = super().new_worker_spec()
        ((name, base),) = spec.items()
        used = collections.Counter(s["options"]["env"].get("CUDA_VISIBLE_DEVICES") for s in self.worker_spec.values())
        wanted = collections.Counter(self.devices)
        free = next((d for d in self.devices if used[d] < wanted[d]), self.devices[0])
        env = {**base["options"]["env"], "CUDA_VISIBLE_DEVICES": free}
        return {name: {**base, "options": {**base["options"], "env": env}}}
