"""Every speed ratio genlab claims, in one run: ``make bench`` (``python -m benchmarks.bench``).

    python -m benchmarks.bench [--threads 1,2] [--repeats 3] [--batch 64] [--out benchmarks/results]

For each thread count: genlab's samplers against diffusers' own loops on the same weights, steps,
batch, seed and guidance (DDPM: DDIMPipeline at DDIM 50 steps, and DDPMPipeline driving the DPM-Solver++
scheduler at the best-FID setting; LDM: diffusers' latent loop with its UNet2DConditionModel at the
best-FID setting and with guidance), each timed A/B/A/B with medians over ``--repeats``; genlab both as
it samples by default (``backend=auto``: the probe's choice for this machine) and as plain PyTorch fp32
(``backend=torch precision=fp32``). Then the LDM against the DDPM at each one's best FID, VAE images/s,
Inception-v3 features/s, and the UNets' achieved GFLOP/s as a fraction of this CPU's peak (measured in
the same run), with the fp32 ceiling: the most any fp32 sampler could gain on diffusers' loop with the
same FLOPs, were every one of them to run at that peak. The machine, its load (before and after) and
the choices the probe made are printed and written to ``benchmarks/results/latest.json`` and
``latest.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from . import common

DDPM_BEST = {"sampler": "dpm-solver++", "steps": 20}
LDM_BEST = {"prompt": "{digit}", "guidance": 1.0, "sampler": "dpm-solver++", "steps": 10}
CASES = [  # (name, model, genlab options, baseline)
    ("ddpm DDIM 50", "ddpm", {"sampler": "ddim", "steps": 50}, "diffusers DDIMPipeline"),
    ("ddpm DPM-Solver++ 20 (best FID)", "ddpm", DDPM_BEST, "diffusers DDPMPipeline, same scheduler"),
    ("ldm DPM-Solver++ 10, guidance 1 (best FID)", "ldm", LDM_BEST, "diffusers latent loop"),
    ("ldm DDIM 20, guidance 3", "ldm", {"prompt": "{digit}", "guidance": 3.0, "sampler": "ddim", "steps": 20},
     "diffusers latent loop"),
]
PLAIN = {"backend": "torch", "precision": "fp32"}


def baseline(model, options: dict, batch: int, seed: int):
    if model.model_id == "ddpm":
        if options["sampler"] == "ddim":
            return common.ddim_pipeline(model.network, options["steps"], batch, seed)
        return common.ddpm_pipeline(model.network, options["sampler"], options["steps"], batch, seed)
    return common.ldm_loop(model.network, batch=batch, seed=seed, **options)


def unet_flops(model, batch: int, guided: bool) -> int:
    """FLOPs of one network evaluation of ``model``'s sampler at ``batch`` (doubled rows with guidance)."""
    if model.model_id == "ddpm":
        from genlab_ddpm.network import Denoiser

        c = model.network.config
        import torch

        return common.flops(Denoiser(model.network), (torch.zeros(batch, c.in_channels, c.sample_size, c.sample_size),
                                                      torch.full((batch,), 500, dtype=torch.long)))
    net = model.network
    return common.flops(net.denoiser(), net.denoiser_example(batch * (2 if guided else 1)))


def compare(name, model, options, what, *, batch, seed, repeats, threads, peaks) -> dict:
    runs = {
        what: baseline(model, options, batch, seed),
        "genlab, plain PyTorch fp32": lambda: model.sample(batch, seed=seed, options={**options, **PLAIN}).images,
        "genlab": lambda: model.sample(batch, seed=seed, options=options).images,
    }
    timed = common.interleaved(runs, repeats)
    ours = model.sample(1, seed=seed, options=options).info  # what auto chose (cached: no new probe)
    reference = timed[what]["result"]
    speed = {k: batch / v["median"] for k, v in timed.items()}
    guided = options.get("guidance", 1.0) != 1.0
    calls = options["steps"]  # network calls per sampler call (with guidance, each on a doubled batch)
    work = unet_flops(model, batch, guided) * calls
    peak = peaks["bf16 conv" if ours.get("precision") == "bf16" else "fp32 conv"]
    return {
        "comparison": name, "threads": threads, "batch": batch, "options": options, "baseline": what,
        "images_per_s": {k: round(v, 2) for k, v in speed.items()},
        "seconds": {k: [round(s, 3) for s in v["all"]] for k, v in timed.items()},
        "ratio": round(speed["genlab"] / speed[what], 2),
        "plain_ratio": round(speed["genlab, plain PyTorch fp32"] / speed[what], 2),
        "genlab_runs_on": {k: ours[k] for k in ("device", "backend", "precision", "mode") if k in ours},
        "max_abs_diff_vs_baseline": float((timed["genlab"]["result"] - reference).abs().max()),
        "plain_max_abs_diff_vs_baseline": float((timed["genlab, plain PyTorch fp32"]["result"] - reference).abs().max()),
        "unet_gflop_per_call": round(work / calls / 1e9, 3),
        "gflops": {k: round(work / (batch / v) / 1e9, 1) for k, v in speed.items()},
        "fraction_of_peak": {k: round(work / (batch / v) / 1e9 / peaks["bf16 conv" if k == "genlab" and
                                                                         ours.get("precision") == "bf16" else "fp32 conv"], 3)
                             for k, v in speed.items()},
        "peak_used": {"genlab": ("bf16 conv" if ours.get("precision") == "bf16" else "fp32 conv"), "others": "fp32 conv",
                      "gflops": peak},
        # the most any fp32 sampler could gain on diffusers here with the same FLOPs: every FLOP of every
        # call at the measured fp32 convolution peak, and nothing else costing time
        "fp32_ceiling_ratio": round(peaks["fp32 conv"] / (work / (batch / speed[what]) / 1e9), 2),
    }


def vae_speed(batch: int, repeats: int) -> float:
    from genlab import get_model

    model = get_model("vae")
    timed = common.interleaved({"vae": lambda: model.sample(batch, seed=0)}, repeats)
    return batch / timed["vae"]["median"]


def inception_speed(images: int, repeats: int) -> float:
    import torch

    from genlab.evals.quality import _extractor

    _, net = _extractor("inception-v3-tf")
    batch = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            return net(batch)

    timed = common.interleaved({"inception": run}, repeats)
    return images / timed["inception"]["median"]


def main(argv=None) -> dict:
    import torch

    from genlab import get_model, runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or all")
    parser.add_argument("--inception-images", type=int, default=32)
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    cases = CASES if args.cases == "all" else [CASES[int(i) - 1] for i in args.cases.split(",")]

    started = time.perf_counter()
    result = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": common.machine(),
              "load_before": common.load(), "code_version": _code_version(), "command": "python -m benchmarks.bench "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "comparisons": [], "families": [], "peaks": {}, "probes": {}}
    print(f"{result['machine']['cpu']} ({result['machine']['cpus']} CPUs, {', '.join(result['machine']['isa'])}), "
          f"torch {torch.__version__}; load before: {result['load_before']}", flush=True)
    models = {m: get_model(m) for m in ("ddpm", "ldm")}
    for threads in threads_list:
        torch.set_num_threads(threads)
        peaks = common.measured_peaks(threads)
        result["peaks"][threads] = {**peaks, "file": {k: v[threads] for k, v in common.FILE_PEAKS.items() if threads in v}}
        print(f"\n{threads} thread(s): peaks now {peaks} GFLOP/s (load {common.load()})", flush=True)
        for name, model_id, options, what in cases:
            row = compare(name, models[model_id], options, what, batch=args.batch, seed=args.seed,
                          repeats=args.repeats, threads=threads, peaks=peaks)
            row["load"] = common.load()
            result["comparisons"].append(row)
            speeds = row["images_per_s"]
            print(f"  {name:<44} {what}: {speeds[what]:7.1f}  genlab plain: {speeds['genlab, plain PyTorch fp32']:7.1f}"
                  f"  genlab ({row['genlab_runs_on'].get('backend')} {row['genlab_runs_on'].get('precision')}): "
                  f"{speeds['genlab']:7.1f} images/s  ->  {row['ratio']:.2f}x (plain {row['plain_ratio']:.2f}x); "
                  f"max |diff| {row['max_abs_diff_vs_baseline']:.1e}; {row['fraction_of_peak']['genlab']:.0%} of peak; "
                  f"fp32 ceiling {row['fp32_ceiling_ratio']:.2f}x",
                  flush=True)
        by = {r["comparison"]: r for r in result["comparisons"] if r["threads"] == threads}
        ddpm_best, ldm_best = by.get(CASES[1][0]), by.get(CASES[2][0])
        family = {"threads": threads, "vae_images_per_s": round(vae_speed(256, args.repeats), 1),
                  "inception_features_per_s": round(inception_speed(args.inception_images, args.repeats), 2)}
        if ddpm_best and ldm_best:
            family["ldm_over_ddpm_at_best_fid"] = round(ldm_best["images_per_s"]["genlab"] / ddpm_best["images_per_s"]["genlab"], 2)
            family["ldm_images_per_s"] = ldm_best["images_per_s"]["genlab"]
            family["ddpm_images_per_s"] = ddpm_best["images_per_s"]["genlab"]
        family["load"] = common.load()
        result["families"].append(family)
        print(f"  VAE {family['vae_images_per_s']:,.0f} images/s (batch 256); Inception-v3 "
              f"{family['inception_features_per_s']:.1f} features/s; LDM/DDPM at best FID: "
              f"{family.get('ldm_over_ddpm_at_best_fid', 'n/a')}x", flush=True)
    for model_id, model in models.items():
        for runner_key, value in model.__dict__.get("_genlab_runners", {}).items():
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
                record = value[1]
                result["probes"][f"{model_id} {record['key']['machine']['threads']} thread(s) "
                                  f"[{', '.join(record['key']['options'])}]"] = {
                    k: record[k] for k in ("choice", "seconds", "refused", "measured_at", "load")}
    result["load_after"] = common.load()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    write(result, args.out)
    return result


def _code_version() -> str:
    try:
        from genlab.training import code_version

        return code_version()
    except Exception:  # noqa: BLE001 - a benchmark without git still runs
        return "unknown"


def write(result: dict, out: str) -> None:
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest.json").write_text(json.dumps(result, indent=1))
    (folder / "latest.md").write_text(markdown(result))
    print(f"\nwrote {folder / 'latest.json'} and {folder / 'latest.md'} ({result['wall_seconds']:.0f} s; "
          f"load after: {result['load_after']})")


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# genlab speed, one run of `make bench`", "",
        f"`{r['command']}` at {r['created_at']}, code {r['code_version']}, {r['wall_seconds']:.0f} s.  ",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs ({', '.join(m['isa'])}), torch {m['torch']}"
        f"{', ' + m['cuda'] if m.get('cuda') else ''}. Load (1, 5, 15 min): {r['load_before']} before, "
        f"{r['load_after']} after.", "",
        "Samplers against diffusers' own loops on the same weights, steps, batch, seed and guidance "
        "(images/s, medians of interleaved repeats; ratio = genlab / diffusers):", "",
        "| comparison | threads | diffusers | genlab plain fp32 | genlab (auto) | runs on | ratio | plain ratio "
        "| max diff | UNet GFLOP/s | of peak | fp32 ceiling | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["comparisons"]:
        s = c["images_per_s"]
        on = c["genlab_runs_on"]
        lines.append(
            f"| {c['comparison']} vs {c['baseline']} | {c['threads']} | {s[c['baseline']]:.1f} | "
            f"{s['genlab, plain PyTorch fp32']:.1f} | {s['genlab']:.1f} | {on.get('backend')} {on.get('precision')} | "
            f"**{c['ratio']:.2f}x** | {c['plain_ratio']:.2f}x | {c['max_abs_diff_vs_baseline']:.1e} | "
            f"{c['gflops']['genlab']:.0f} (diffusers {c['gflops'][c['baseline']]:.0f}) | "
            f"{c['fraction_of_peak']['genlab']:.0%} of {c['peak_used']['genlab']} "
            f"(diffusers {c['fraction_of_peak'][c['baseline']]:.0%}) | {c.get('fp32_ceiling_ratio', 'n/a')}x | {c['load']} |")
    lines += ["", "| threads | LDM / DDPM at best FID | LDM images/s | DDPM images/s | VAE images/s | "
              "Inception-v3 features/s | peaks now (file), GFLOP/s | load |", "|---|---|---|---|---|---|---|---|"]
    for f in r["families"]:
        p = r["peaks"][f["threads"]] if f["threads"] in r["peaks"] else r["peaks"][str(f["threads"])]
        lines.append(f"| {f['threads']} | {f.get('ldm_over_ddpm_at_best_fid', 'n/a')}x | {f.get('ldm_images_per_s', '')} | "
                     f"{f.get('ddpm_images_per_s', '')} | {f['vae_images_per_s']:,.0f} | {f['inception_features_per_s']:.1f} | "
                     f"fp32 conv {p['fp32 conv']}, bf16 conv {p['bf16 conv']} ({', '.join(f'{k} {v}' for k, v in p['file'].items())}) "
                     f"| {f['load']} |")
    if r["probes"]:
        lines += ["", "What `backend=auto` chose (the probe: seconds per call at batch 64, cached per machine and weights):", ""]
        for key, p in r["probes"].items():
            timings = ", ".join(f"{k} {v:.3f}" for k, v in p["seconds"].items())
            lines.append(f"- {key}: **{p['choice']}** ({timings}; measured {p['measured_at']}, load {p['load']})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
