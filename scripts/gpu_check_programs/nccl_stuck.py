"""Check 5 of scripts/gpu_check.py: one NCCL rank whose all_reduce is queued behind a
long GPU sleep, so that it cannot finish within the process group's timeout.

    MASTER_PORT=N python nccl_stuck.py TIMEOUT_S SLEEP_S
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist

timeout_s, sleep_s = float(sys.argv[1]), float(sys.argv[2])
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
device = torch.device("cuda", 0)
torch.cuda.set_device(device)
dist.init_process_group("nccl", rank=0, world_size=1, timeout=datetime.timedelta(seconds=timeout_s), device_id=device)
x = torch.ones(1 << 20, device=device)
dist.all_reduce(x)  # a first one, that completes
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
torch.cuda._sleep(10 ** 8)  # calibration: how many of _sleep's cycles make a second here
end.record()
end.synchronize()
cycles_per_s = 10 ** 8 / (start.elapsed_time(end) / 1000.0)
torch.cuda._sleep(int(sleep_s * cycles_per_s))  # the device is busy this long
dist.all_reduce(x)  # STUCK_LINE: queued behind the sleep
print("all_reduce returned", x[0].item(), flush=True)
dist.destroy_process_group()
