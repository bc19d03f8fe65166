"""Run the original's timer (`../shared/bench/torch_original.py`) on a CUDA GPU.

    python tools/torch_cuda.py ../shared/bench/torch_original.py --config small [timer flags]

The timer is written for a CPU. Here every tensor it makes is made on the GPU
(`torch.set_default_device("cuda")`), the model it builds is moved there (`.cuda()`: the
original registers its position table from numpy, on the CPU), and every clock read first
waits for the GPU (`torch.cuda.synchronize()`), so its figures count finished work, as ours do.
`tools/compare_original.py --torch-cuda` runs the timer through this.
"""
import importlib.util
import json
import sys
import time

import torch


def main():
    if len(sys.argv) < 2 or not torch.cuda.is_available():
        sys.exit(__doc__ if len(sys.argv) < 2 else "torch_cuda.py: torch sees no CUDA GPU")
    torch.set_default_device("cuda")
    clock = time.perf_counter

    def synced():
        torch.cuda.synchronize()
        return clock()

    time.perf_counter = synced
    print(json.dumps(dict(torch_device=torch.cuda.get_device_name())), file=sys.stderr)
    spec = importlib.util.spec_from_file_location("torch_original", sys.argv[1])
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    build = timer.build
    timer.build = lambda cfg: build(cfg).cuda()
    sys.argv = sys.argv[1:]
    timer.main()


if __name__ == "__main__":
    main()
