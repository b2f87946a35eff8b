"""The plain baselines several comparisons share (open_clip's loss module, PyTorch's top-k), in one
place so that no comparison imports another's."""
import importlib.util
import pathlib

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
