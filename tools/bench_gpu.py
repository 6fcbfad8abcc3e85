"""Benchmark VDM training on one CUDA GPU and print one table.

The network is the VDM paper's CIFAR-10 ScoreUNet (the `cifar10` preset of vdm_nb.train: 128 channels,
32 blocks, no downsampling) trained by vdm_nb's Learner (AdamW, clipping, EMA) on random 8-bit images at batch
128. For float32 eager, bf16 eager, fp16 eager (dynamic loss scaling), bf16 with the network compiled and bf16
with the whole objective compiled as one graph (schedule, diffusion, network and loss; `compile=True` of the
Learner), it measures training images/s, the model FLOP utilisation (FLOPs of one forward + backward pass per
image, counted by torch's FlopCounterMode, times images/s, over a bf16 matmul peak measured in the same run, and
over the card's dense bf16 specification when known), the peak memory (torch.cuda.max_memory_allocated), the host
syncs of one training step (vdm_nb.core.SyncCounter over 3 steps between log rows) and the graph breaks of the
objective (torch._dynamo.explain). CUDA graphs are not used: the learning rate changes every warm-up step and the
adaptive schedule's buffers change every step. With --fmnist-minutes M it then trains the `fmnist` preset for M
minutes and prints its test bits/dim.

Usage (from the repository root):
    python tools/bench_gpu.py                        # the table (about 2 minutes on an H100-class GPU)
    python tools/bench_gpu.py --fmnist-minutes 10    # the table, then 10 minutes of Fashion-MNIST
    python tools/bench_gpu.py --dry-run              # the same code path on the CPU: tiny network, 2 steps
Without a CUDA GPU (and without --dry-run / --device cpu) it prints why and exits with status 1.
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # run from a checkout without installing
from vdm_nb.core import SyncCounter                                  # noqa: E402
from vdm_nb.learner import Learner, step_noise                       # noqa: E402
from vdm_nb.losses import VDMLoss                                    # noqa: E402
from vdm_nb.models import flops_per_example, n_params                # noqa: E402
from vdm_nb.schedules import get_schedule                            # noqa: E402
from vdm_nb.train import make_config, make_model, train             # noqa: E402

MODES = {'fp32': ('float32 eager', 'no', None), 'bf16': ('bf16 eager', 'bf16', None), 'fp16': ('fp16 eager', 'fp16', None),
         'bf16-net-compile': ('bf16, net compiled', 'bf16', 'network'),
         'bf16-compile': ('bf16, all compiled', 'bf16', 'objective')}       # (label, mixed_precision, what is compiled)
SPEC_BF16_TFLOPS = {'H200': 989.4, 'H100 SXM': 989.4, 'H100 80GB HBM3': 989.4, 'H100 PCIe': 756.0, 'H100 NVL': 835.0,
                    'A100': 312.0, 'L40S': 362.1, 'L4': 121.0}     # dense (no sparsity) bf16 tensor-core peaks


def spec_tflops(name: str) -> float | None:
    "The dense bf16 peak of a known GPU, from its name (longest matching key), else None"
    hits = [k for k in SPEC_BF16_TFLOPS if k.lower() in name.lower()]
    return SPEC_BF16_TFLOPS[max(hits, key=len)] if hits else None


def sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, iters: int = 20) -> float:
    "Achieved TFLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs), best of three timed runs of `iters` products"
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3): a @ b                                           # warm-up: kernel selection, clocks
    best = math.inf
    for _ in range(3):
        sync(device); t0 = time.perf_counter()
        for _ in range(iters): a @ b
        sync(device); best = min(best, time.perf_counter() - t0)
    return 2*n**3*iters/best/1e12


def count_flops(cfg, shape: tuple) -> float:
    "FLOPs of one forward + backward pass per image, counted on the meta device (nothing is computed)"
    with torch.device('meta'): net = make_model(cfg, shape[0])
    return flops_per_example(net, shape, backward=True, batch_size=2)


def bench_mode(mode: str, cfg, data: torch.Tensor, batch_size: int, warmup: int, steps: int, device: torch.device) -> dict:
    "Train fresh copies of the network with vdm_nb's Learner: `warmup` untimed steps (compilation), then `steps` timed ones"
    _, precision, compiled = MODES[mode]
    torch._dynamo.reset(); torch.manual_seed(0)
    net = make_model(cfg, data.shape[1])
    loss = VDMLoss(get_schedule(cfg.schedule, cfg.logsnr_min, cfg.logsnr_max), pred=cfg.pred, vocab_size=256)
    learn = Learner(torch.compile(net) if compiled == 'network' else net, loss, data, batch_size, lr=cfg.lr,
                    weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip,
                    ema_decay=cfg.ema_decay, mixed_precision=precision, compile=compiled == 'objective',
                    cpu=device.type == 'cpu', log_every=10**9)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    learn.fit(warmup)
    sync(device); t0 = time.perf_counter()
    learn.fit(warmup + steps)
    sync(device); dt = time.perf_counter() - t0
    losses = learn.losses[-steps:]
    if not all(math.isfinite(v) for v in losses): raise FloatingPointError(f'{mode}: non-finite training loss {losses}')
    out = {'img_s': batch_size*steps/dt, 'ms_step': 1000*dt/steps, 'loss': sum(losses)/len(losses),
           'peak_gib': torch.cuda.max_memory_allocated(device)/2**30 if device.type == 'cuda' else None,
           'n_params': n_params(net), 'skipped': sum(learn.history['skipped'])}
    if compiled is None:                          # a dispatch mode cannot run inside compiled code: count the eager step
        with SyncCounter() as c: learn.fit(learn.step + 3)              # three steps between two log rows
        out['syncs'] = c.count/3
    obj = getattr(learn.objective, '_orig_mod', learn.objective)
    t, eps, eps_0 = step_noise(0, 8, tuple(data.shape[1:]), 0, recon=True, device=device)
    torch._dynamo.reset()
    out['breaks'] = torch._dynamo.explain(obj)(learn.data[:8], t, eps, eps_0).graph_break_count
    del learn, net, loss
    gc.collect()
    torch._dynamo.reset()
    if device.type == 'cuda': torch.cuda.empty_cache()
    return out


def fmt(v, spec: str, none: str = 'n/a') -> str:
    return none if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--batch-size', type=int, default=128, help='global batch size (default 128, as in VDM)')
    p.add_argument('--steps', type=int, default=20, help='timed training steps per mode')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps per mode before timing (they include compilation)')
    p.add_argument('--modes', default=','.join(MODES), help=f'comma-separated, from {",".join(MODES)}')
    p.add_argument('--matmul-size', type=int, default=8192, help='n of the n x n x n bf16 matmul that measures the peak')
    p.add_argument('--spec-tflops', type=float, help='dense bf16 peak of the card in TFLOP/s (default: from a table of known GPUs)')
    p.add_argument('--fmnist-minutes', type=float, help='then train the fmnist preset for this many minutes and print its test bits/dim')
    p.add_argument('--data-root', help='Fashion-MNIST folder for --fmnist-minutes')
    p.add_argument('--out', default='runs/bench_fmnist', help='output folder of the fmnist run (must not hold a run)')
    p.add_argument('--device', choices=('cuda', 'cpu'), default='cuda', help='cpu only to smoke-test the code path')
    p.add_argument('--tiny', action='store_true', help='a tiny network on 8x8 images instead of the CIFAR-10 one')
    p.add_argument('--dry-run', action='store_true', help='= --device cpu --tiny --batch-size 4 --steps 2 --warmup 1 --matmul-size 256')
    a = p.parse_args(argv)
    if a.dry_run: a.device, a.tiny, a.batch_size, a.steps, a.warmup, a.matmul_size = 'cpu', True, 4, 2, 1, 256
    modes = [m.strip() for m in a.modes.split(',') if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes: p.error(f'unknown mode(s) {bad}: use some of {list(MODES)}')
    for name in ('batch_size', 'steps', 'matmul_size'):
        if getattr(a, name) < 1: p.error(f'--{name.replace("_", "-")} must be >= 1')
    if a.warmup < 0: p.error('--warmup must be >= 0')
    if a.device == 'cuda' and not torch.cuda.is_available():
        print(f'bench_gpu.py needs a CUDA GPU, but torch.cuda.is_available() is False (torch {torch.__version__}). '
              'Run it on a GPU machine, or smoke-test the code path on the CPU with --dry-run.', file=sys.stderr)
        return 1
    device = torch.device(a.device)
    tiny = dict(channels=16, n_blocks=1, norm_groups=8) if a.tiny else {}
    cfg = make_config('cifar10', device=a.device, **tiny)
    shape = (3, 8, 8) if a.tiny else (3, 32, 32)
    data = torch.randint(0, 256, (4*a.batch_size, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    peak_bf16 = matmul_tflops(a.matmul_size, torch.bfloat16, device)
    peak_fp32 = matmul_tflops(a.matmul_size, torch.float32, device)
    spec = a.spec_tflops or (spec_tflops(name) if device.type == 'cuda' else None)
    flops = count_flops(cfg, shape)
    rows = {m: bench_mode(m, cfg, data, a.batch_size, a.warmup, a.steps, device) for m in modes}

    print(f'device: {name}; torch {torch.__version__}')
    print(f"network: ScoreUNet {cfg.channels} channels, {cfg.n_blocks} blocks, {rows[modes[0]]['n_params']/1e6:.3g} M parameters, "
          f'images {shape}, batch {a.batch_size}; {flops/1e9:.4g} GFLOP per image (forward + backward)')
    print(f'peak: measured {a.matmul_size}^3 matmul bf16 {peak_bf16:.4g} TFLOP/s, float32 {peak_fp32:.4g} TFLOP/s; '
          f"dense bf16 spec {fmt(spec, '.1f')} TFLOP/s; MFU = model FLOP/s over the bf16 peak; {a.steps} timed steps after {a.warmup}")
    head = (f"{'mode':<20}{'img/s':>9}{'vs fp32':>8}{'ms/step':>9}{'TFLOP/s':>9}{'MFU meas.':>10}{'MFU spec':>9}"
            f"{'peak GiB':>9}{'bits/dim':>9}{'syncs':>6}{'breaks':>7}{'skipped':>8}")
    print(head); print('-'*len(head))
    base = rows[modes[0]]['img_s']
    for m in modes:
        r = rows[m]
        tf = flops*r['img_s']/1e12
        print(f"{MODES[m][0]:<20}{r['img_s']:>9.1f}{r['img_s']/base:>7.2f}x{r['ms_step']:>9.1f} {tf:>8.3g}{tf/peak_bf16:>10.1%}"
              f"{fmt(tf/spec if spec else None, '.1%'):>9}{fmt(r['peak_gib'], '.2f'):>9}{r['loss']/(math.prod(shape)*math.log(2)):>9.3f}"
              f"{fmt(r.get('syncs'), '.0f', '-'):>6}{r['breaks']:>7d}{r['skipped']:>8d}")
    print(f'syncs: host syncs per training step (counted on the eager modes); breaks: graph breaks of the objective; '
          f'skipped: fp16 steps skipped by the loss scaler; "vs fp32": images/s over those of {MODES[modes[0]][0]}')

    if a.fmnist_minutes is not None:
        if not a.fmnist_minutes > 0: p.error('--fmnist-minutes must be > 0')
        extra = dict(channels=16, n_blocks=1, norm_groups=8, n_test=200, eval_times=1, n_samples=4, sample_steps=5) if a.tiny else {}
        try:
            res = train('fmnist', a.out, quiet=True, minutes=a.fmnist_minutes, steps=10**8, device=a.device,
                        data_root=a.data_root, **extra)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            print(f'fmnist run not started: {err}', file=sys.stderr)
            return 1
        print(f"fmnist: {res['steps']} steps in {res['train_seconds']/60:.1f} min ({res['config']['batch_size']*res['steps']/res['train_seconds']:.0f} img/s), "
              f"test bits/dim {res['test_bpd']:.4f} +- {res['test_bpd_se']:.4f} on {res['n_test']} images "
              f"(per-pixel baseline {res['per_pixel_bpd']:.4f}); files in {a.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
