"""Every bundled model on an accelerator, in one go: does it run there, is it reproducible, how fast.

    python -m benchmarks.device_check [--device cuda] [--batch 256]

For every bundled model (the VAE, the DDPM, the LDM's first stage, the LDM, the flow and its two
few-step students) on ``--device`` (default: auto, i.e. CUDA or MPS when there is one): sampling at
each model's best-FID setting, timed against the CPU; the same seed twice on the device (identical?)
and against the CPU (how far apart; GPUs round differently); genlab's samplers against diffusers' own
loops on the same device, weights, steps, batch and seed (DDIMPipeline for the DDPM, the latent loop
for the LDM); encode/decode/reconstruct, the likelihood bound, attention maps, DDIM and ODE
inversion; the eval's feature network on the device against the CPU. Prints one line per check and
ends with "all N checks passed" or the list of failures (exit 1); ``--out FILE`` also writes them as
JSON. Meant for a lent GPU machine; on a CPU-only machine it checks the CPU path and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

BEST = {
    "vae": {},
    "ddpm": {"sampler": "dpm-solver++", "steps": 20},
    "ldm": {"prompt": "{digit}", "guidance": 1.0, "sampler": "dpm-solver++", "steps": 10},
    "flow": {"sampler": "heun", "steps": 8},
    "flow-reflow": {"sampler": "euler", "steps": 4},
    "flow-distill": {"sampler": "euler", "steps": 4},
}
# genlab's sampler against diffusers' own loop on the same device (benchmarks.common's baselines)
VERSUS = [("ddpm", {"sampler": "ddim", "steps": 50}, "diffusers DDIMPipeline"),
          ("ldm", BEST["ldm"], "diffusers latent loop")]


def timed(fn, repeats: int = 3):
    fn()  # warm-up (cuDNN autotuning, lazy loading)
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best, out


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> int:
    import torch

    from genlab import get_model, runtime
    from genlab.datasets import load_dataset, to_uint8, to_unit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=None, help="also write the checks as JSON to this file")
    args = parser.parse_args(argv)
    device = runtime.resolve_device(args.device)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}; device {device} ({runtime.device_name(device)}); CPU {runtime.cpu_model()}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if device.type == "cpu":
        print("no accelerator here: checking the CPU path only")
    failures, checks, rows = [], 0, []

    def check(name, fn):
        nonlocal checks
        checks += 1
        try:
            detail = fn()
            print(f"ok    {name}: {detail}", flush=True)
            rows.append({"check": name, "ok": True, "detail": detail})
        except Exception as exc:  # noqa: BLE001 - report every failure, then go on
            failures.append(name)
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc(limit=3)

    heldout = to_unit(load_dataset("mnist-5k", "heldout").images[:16])
    models = {m: (get_model(m, device=device), get_model(m, device=cpu)) for m in ("vae", "ddpm", "ldm-autoencoder", "ldm", "flow", "flow-reflow", "flow-distill")}

    for model_id, options in BEST.items():
        on, off = models[model_id]

        def sampling(on=on, off=off, options=options, model_id=model_id):
            seconds, a = timed(lambda: on.sample(args.batch, seed=3, options=options))
            b = on.sample(args.batch, seed=3, options=options)
            cpu_seconds, c = timed(lambda: off.sample(args.batch, seed=3, options=options), repeats=1)
            assert a.images.device.type == "cpu" and a.images.shape == c.images.shape
            assert torch.isfinite(a.images).all()
            same = float((a.images - b.images).abs().max())
            versus_cpu = float((a.images - c.images).abs().mean())
            return (f"{args.batch / seconds:,.0f} images/s on {device} vs {args.batch / cpu_seconds:,.0f} on the CPU "
                    f"({cpu_seconds / seconds:.1f}x); same seed twice: max |diff| {same:.1e}; vs CPU: mean |diff| "
                    f"{versus_cpu:.1e}; ran on {a.info.get('device')} {a.info.get('backend', '')} {a.info.get('precision', '')}")

        check(f"{model_id} sample {options}", sampling)

    from . import common

    for model_id, options, what in VERSUS:
        on = models[model_id][0]

        def versus(on=on, options=options, what=what):
            ours = lambda: on.sample(args.batch, seed=3, options=options).images  # noqa: E731
            net = on.network
            theirs = (common.ddim_pipeline(net, options["steps"], args.batch, 3) if on.model_id == "ddpm"
                      else common.ldm_loop(net, batch=args.batch, seed=3, **options))
            timing = common.interleaved({"genlab": lambda: (ours(), _sync())[0], what: lambda: (theirs(), _sync())[0]},
                                        repeats=3)
            a, b = timing["genlab"]["result"], timing[what]["result"].cpu()  # both in [0, 1]
            diff = float((a.float() - b.float()).abs().max())
            ratio = timing[what]["median"] / timing["genlab"]["median"]
            return (f"genlab {args.batch / timing['genlab']['median']:,.0f} images/s vs {what} "
                    f"{args.batch / timing[what]['median']:,.0f} on {device} -> {ratio:.2f}x; max |diff| {diff:.1e}")

        check(f"{model_id} {options} vs {what}", versus)

    vae, vae_cpu = models["vae"]
    check("vae reconstruct + bits/dim", lambda: (
        f"MSE {float((vae.reconstruct(heldout) - heldout).pow(2).mean()):.4f} (CPU "
        f"{float((vae_cpu.reconstruct(heldout) - heldout).pow(2).mean()):.4f}); "
        f"bpd {vae.bits_per_dim(to_uint8(heldout), k=8)['bpd']:.3f} (CPU {vae_cpu.bits_per_dim(to_uint8(heldout), k=8)['bpd']:.3f})"))
    ddpm, ddpm_cpu = models["ddpm"]
    check("ddpm DDIM inversion round trip", lambda: (
        f"max |decode(encode(x)) - x| {float((ddpm.reconstruct(heldout[:4], steps=20) - heldout[:4]).abs().max()):.4f} "
        f"(CPU {float((ddpm_cpu.reconstruct(heldout[:4], steps=20) - heldout[:4]).abs().max()):.4f})"))
    check("ddpm bits/dim (5 exact terms + 5 strata)", lambda: (
        f"{ddpm.bits_per_dim(to_uint8(heldout), exact_terms=5, strata=5)['bpd']:.3f} "
        f"(CPU {ddpm_cpu.bits_per_dim(to_uint8(heldout), exact_terms=5, strata=5)['bpd']:.3f})"))
    check("ddpm trajectory frames on the CPU", lambda: str(
        [tuple(f["x_t"].shape) for f in ddpm.trajectory(2, seed=0, options={"steps": 4}, record_every=2)][-1]))
    ae, ae_cpu = models["ldm-autoencoder"]
    check("ldm-autoencoder reconstruct", lambda: (
        f"MSE {float((ae.reconstruct(heldout) - heldout).pow(2).mean()):.4f} "
        f"(CPU {float((ae_cpu.reconstruct(heldout) - heldout).pow(2).mean()):.4f})"))
    ldm, _ = models["ldm"]
    check("ldm attention maps", lambda: (
        lambda out: f"{len(out['tokens'])} token maps of {tuple(out['maps'].shape[1:])}, on {out['maps'].device}")(
        ldm.attention_maps(seed=0, options={"prompt": "a thick 7", "steps": 10, "guidance": 1.0})))

    def features():
        from genlab.evals.quality import extract_features

        images = to_uint8(heldout)
        a = extract_features(images, "mnist-classifier", cache=False)["features"]
        return f"{tuple(a.shape)} classifier features on {device}"

    check("eval feature network", features)
    flow, flow_cpu = models["flow"]
    check("flow ODE inversion round trip", lambda: (
        f"max |decode(encode(x)) - x| {float((flow.reconstruct(heldout[:4]) - heldout[:4]).abs().max()):.4f} "
        f"(CPU {float((flow_cpu.reconstruct(heldout[:4]) - heldout[:4]).abs().max()):.4f})"))
    print(f"\n{'all %d checks passed' % checks if not failures else 'FAILED: ' + ', '.join(failures)} on {device}")
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps({
            "device": str(device), "device_name": runtime.device_name(device), "torch": torch.__version__,
            "cpu": runtime.cpu_model(), "batch": args.batch, "checks": rows, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
