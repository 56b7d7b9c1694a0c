"""NCCL's Flight Recorder trigger, stood in for on a CPU box, then a hang.

A gloo group of one rank (so ptdiag records a distributed job), and, for each of the 16
ranks of a recorded NCCL job (argv[1]: a folder of `_dump_<rank>` files, such as
fixtures/fr_dumps/gpu_error_1st), what ProcessGroupNCCL's heartbeat monitor does with
TORCH_NCCL_DEBUG_INFO_PIPE_FILE (torch's DumpPipe): a named pipe `<stem><rank>.pipe`
opened non-blocking and polled each second; when anything was written to it, the rank's
dump goes to TORCH_FR_DUMP_TEMP_FILE + rank. Then the program waits forever."""

import os
import shutil
import sys
import tempfile
import threading
import time

import torch.distributed as dist

RANKS = 16
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
recorded, stem, target = sys.argv[1], os.environ["TORCH_NCCL_DEBUG_INFO_PIPE_FILE"], os.environ["TORCH_FR_DUMP_TEMP_FILE"]
pipes = {}
for rank in range(RANKS):
    path = f"{stem}{rank}.pipe"
    os.mkfifo(path, 0o666)
    pipes[rank] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def monitor():
    while True:
        for rank, fd in pipes.items():
            try:
                written = os.read(fd, 128)
            except BlockingIOError:  # a writer holds it open, nothing written yet
                written = b""
            if written:
                shutil.copyfile(os.path.join(recorded, f"_dump_{rank}"), f"{target}{rank}")
        time.sleep(1)


threading.Thread(target=monitor, daemon=True).start()
print("WAITING", flush=True)
while True:
    time.sleep(1)
