"""What several comparisons share, in one place so that no comparison imports another's: the plain
baselines (open_clip's loss module, PyTorch's top-k) and the time-and-peak-memory measurement of a call."""
import gc
import importlib.util
import pathlib
import time

import torch


def open_clip_loss_module():
    """open_clip's loss.py, loaded on its own: it needs only torch, while `import open_clip` pulls in
    torchvision (whose wheels replace the CPU torch with a CUDA build). So
    `pip install --no-deps open_clip_torch` is enough to compare with its ClipLoss. None when absent."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = pathlib.Path(spec.origin).parent / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def torch_topk(q, c, k, chunk=16384):
    """The plain PyTorch way: matmul per corpus chunk, torch.topk, merge."""
    best_s, best_i = None, None
    for j0 in range(0, len(c), chunk):
        s = q @ c[j0 : j0 + chunk].T
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1)
        ti += j0
        if best_s is not None:
            ts, order = torch.topk(torch.cat([best_s, ts], 1), k, dim=1)
            ti = torch.cat([best_i, ti], 1).gather(1, order)
        best_s, best_i = ts, ti
    return best_s, best_i


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Hands freed memory back (so reuse cannot hide growth), resets the peak (VmHWM) to the current
    RSS and returns that RSS (KiB): call, then (status_kib("VmHWM") - it) is the call's peak."""
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return before


def time_and_peak(fn, repeats: int) -> dict:
    """Best wall and CPU time of ``repeats`` calls of fn, and the largest peak memory above the RSS
    before them (MiB); fn warmed up by the caller."""
    before = reset_peak()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"best_s": min(times), "cpu_s": min(cpu), "peak_mb": (status_kib("VmHWM") - before) / 1024}
