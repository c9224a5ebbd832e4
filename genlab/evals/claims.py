"""The seed texts' comparison tables, one row per claim, each checked against this run's numbers.

The claims come from the comparison tables genlab is built from ("Diffusion vs VAEs": latent
dimension, generation, sample quality, training, interpolation, posterior collapse; and the
"sampling speed", "training complexity", "robustness to mode collapse" rows). For every claim the
measured value of each family is shown, and a verdict says whether the claim held on this data.
A verdict needs both families in the suite; otherwise the row says what is missing.

The "generation" and "sampling speed" rows also carry the flow-matching family when the suite has
it: its quality (and speed) at 1, 2 and 4 network evaluations, against diffusion at its best and
the VAE's single decode. A flow that matches the DDPM's best FID in 4 evaluations or fewer turns
"iterative denoising" into "partly held": true of the DDPM and LDM as sampled, not of the family.
"""

from __future__ import annotations

from math import prod

DIFFUSION, VAE, LATENT = "diffusion", "vae", "latent-diffusion"
FLOW = "flow-matching"  # few-step ODE samplers: the answer to "slow sampling" (rows 2 and 7)
FEW_STEPS = (1, 2, 4)  # the flow line reports quality at these NFE


def fid_of(row: dict, extractor: str | None = None) -> float | None:
    """The FID a row is compared by: at the floor's N (``eq_fid``), or at N for results without it."""
    if extractor is not None:
        row = (row.get("extractors") or {}).get(extractor) or {}
    return row.get("eq_fid", row.get("fid"))


def fid_spread(row: dict) -> float | None:
    spread = row.get("spread") or {}
    return spread.get("eq_fid") if "eq_fid" in row else spread.get("fid")


def _matches(row: dict, best: dict) -> tuple[bool, str]:
    """Whether ``row``'s FID is within two seed spreads of ``best``'s at the floor's N and, where both rows
    have it, at the suite's own N too: at N = 1,000 the spread is far smaller, and can tell apart two
    rows that 500 images cannot. Returns (matches, where it does not: "at N ..." or "")."""
    for key, where in (("eq_fid", "at the floor's N"), ("fid", "at the suite's N")):
        if key not in row or key not in best or row[key] is None or best[key] is None:
            continue
        spread = max((row.get("spread") or {}).get(key) or 0, (best.get("spread") or {}).get(key) or 0)
        if row[key] > best[key] + 2 * spread:
            return False, (f"{where}: FID {_num(row[key])} against {_num(best[key])}, more than twice the "
                           f"larger seed spread ({_num(spread, 2)}) apart")
    return True, ""


def _best(result: dict, family: str) -> dict | None:
    """The family's row at its best FID (or its first row if none sampled)."""
    rows = [r for r in result["models"] if r["family"] == family]
    sampled = [r for r in rows if fid_of(r) is not None]
    if sampled:
        return min(sampled, key=fid_of)
    return rows[0] if rows else None


def _flow_at_few_steps(result: dict) -> tuple[dict[int, dict], dict | None]:
    """The flow family's best-FID row at each NFE of ``FEW_STEPS`` measured, plus its best row of all
    under the key 0; and its best row at ``max(FEW_STEPS)`` NFE or fewer (None if it has none), which
    is also listed under its NFE: a verdict that cites it is read beside it."""
    rows = [r for r in result["models"] if r["family"] == FLOW and r.get("nfe") and fid_of(r) is not None]
    picked = {k: min((r for r in rows if r["nfe"] == k), key=fid_of, default=None) for k in FEW_STEPS}
    picked = {k: r for k, r in picked.items() if r is not None}
    if rows:
        picked[0] = min(rows, key=fid_of)
    few = min((r for r in rows if r["nfe"] <= max(FEW_STEPS)), key=fid_of, default=None)
    if few is not None:
        picked.setdefault(few["nfe"], few)
    return picked, few


def _flow_line(picked: dict[int, dict], speed: bool = False) -> str:
    """"FID 30.1 at 1 NFE (label), ...; best FID 25.0 at 15 NFE (label)", with images/s if ``speed``."""
    def one(row):
        rate = f", {_num(row.get('images_per_second'))} images/s" if speed else ""
        return f"{_fid(row)} at {row['nfe']} NFE ({row['model']}{rate})"

    lines = [one(picked[k]) for k in sorted(k for k in picked if k)]
    best = picked[0]
    return "; ".join(lines + ([] if best["nfe"] in picked else [f"best {one(best)}"]))


def _first_with(result: dict, family: str, key: str) -> dict | None:
    return next((r for r in result["models"] if r["family"] == family and r.get(key)), None)


def _num(value, digits: int = 3) -> str:
    from .report import fmt

    return fmt(value, digits)


def _fid(row: dict) -> str:
    spread = fid_spread(row)
    return f"FID {_num(fid_of(row))}" + (f" ± {_num(spread, 2)}" if spread else "")


def _claim(aspect, diffusion_claim, vae_claim, measured: dict, verdict: str, why: str) -> dict:
    return {"aspect": aspect, "claim": {DIFFUSION: diffusion_claim, VAE: vae_claim},
            "measured": measured, "verdict": verdict, "why": why}


def _missing(aspect, diffusion_claim, vae_claim, what: str) -> dict:
    return _claim(aspect, diffusion_claim, vae_claim, {}, "not measured", what)


def seed_claims(result: dict) -> list[dict]:
    """One dict per claim: aspect, the seed texts' claim per family, measured values, verdict, why."""
    d, v, ld = _best(result, DIFFUSION), _best(result, VAE), _best(result, LATENT)
    flow, few = _flow_at_few_steps(result)  # few: the flow's best at 4 NFE or fewer
    rows = []
    need = "needs a diffusion and a vae model in the suite"

    # 1. latent dimension
    aspect = ("Latent dimension", "Same as data", "Compressed")
    if d and v and d.get("latent_shape") and v.get("latent_shape"):
        data_dim = prod(d["data_shape"])
        dd, vd = prod(d["latent_shape"]), prod(v["latent_shape"])
        measured = {DIFFUSION: f"{dd:,} (data: {data_dim:,})", VAE: f"{vd:,} ({vd / data_dim:.1%} of the data)"}
        if ld and ld.get("latent_shape"):
            ldd = prod(ld["latent_shape"])
            measured[LATENT] = f"{ldd:,} ({ldd / data_dim:.1%} of the data)"
        held = dd == data_dim and vd < data_dim
        rows.append(_claim(*aspect, measured, "held" if held else "did not hold",
                           "x_T has the image's shape; the VAE's z is a short vector" if held else
                           "latent sizes differ from the claim"))
    else:
        rows.append(_missing(*aspect, need))

    # 2. generation steps
    aspect = ("Generation", "Iterative denoising", "Single decode")
    if d and v and d.get("nfe") and v.get("nfe"):
        measured = {DIFFUSION: f"{d['nfe']} network evaluations ({d['model']})", VAE: f"{v['nfe']} network evaluation"}
        if ld and ld.get("nfe"):
            measured[LATENT] = f"{ld['nfe']} evaluations + 1 decode ({ld['model']})"
        held = d["nfe"] > 1 and v["nfe"] == 1
        verdict, why = "held" if held else "did not hold", "NFE per image at each family's best FID"
        if flow:
            measured[FLOW] = _flow_line(flow)
            # a diffusion-type model that reaches the best diffusion model's quality (pixel or latent) in
            # a few steps answers "iterative": the claim then holds for the DDPM and LDM as sampled, not
            # for the family
            best = min((r for r in (d, ld) if r and r.get("nfe") and fid_of(r) is not None), key=fid_of)
            fast_enough, apart = _matches(few, best) if few else (False, "")
            if held and fast_enough:
                verdict = "partly held"
            why += (f"; against the DDPM's best {_fid(d)} at {d['nfe']} NFE"
                    + (f", the LDM's {_fid(ld)} at {ld['nfe']} NFE" if ld and fid_of(ld) is not None else "")
                    + f" and the VAE's {_fid(v)} at 1: the flow-matching model "
                    + (f"matches the best diffusion model's quality ({best['model']}) at {few['nfe']} NFE"
                       if fast_enough else
                       f"does not reach the best diffusion model's quality ({best['model']}) in 4 NFE or fewer"
                       + (f" ({few['model']} {apart})" if apart else "")))
        rows.append(_claim(*aspect, measured, verdict, why))
    else:
        rows.append(_missing(*aspect, need))

    # 3. sample quality
    aspect = ("Sample quality", "State-of-the-art", "Often blurry")
    floor = result["real_data_floor"]
    if d and v and fid_of(d) is not None and fid_of(v) is not None:
        real_sharp = floor.get("sharpness")

        def quality(row):
            sharp = row.get("sharpness")
            rel = f", sharpness {sharp / real_sharp:.0%} of real" if sharp and real_sharp else ""
            return f"{_fid(row)}{rel}"

        measured = {DIFFUSION: quality(d), VAE: quality(v)}
        if ld and fid_of(ld) is not None:
            measured[LATENT] = quality(ld)
        spreads = [fid_spread(r) for r in (d, v)]
        spread = max((x or 0) for x in spreads)
        better = fid_of(d) + 2 * spread < fid_of(v)
        blurry = bool(real_sharp and v.get("sharpness") and d.get("sharpness")
                      and v["sharpness"] < d["sharpness"] and v["sharpness"] < 0.9 * real_sharp)
        verdict = "held" if better and blurry else "partly held" if better or blurry else "did not hold"
        # other feature extractors (or the same network with another resize) may rank the two
        # families differently: then the verdict depends on the extractor, and the row says so
        others = [e for e in result.get("extractors", [])[1:]
                  if fid_of(d, e) is not None and fid_of(v, e) is not None]
        disagree = [e for e in others if (fid_of(d, e) < fid_of(v, e)) != (fid_of(d) < fid_of(v))]
        for e in others:
            for family, row in ((DIFFUSION, d), (VAE, v), (LATENT, ld)):
                fid = fid_of(row, e) if row else None
                if family in measured and fid is not None:
                    measured[family] += f"; FID {_num(fid)} on {e}"
        if disagree:
            verdict = "depends on the feature extractor"
        floor_fid = fid_of(floor)
        why = (f"diffusion's FID is {'lower' if better else 'not clearly lower'} than the VAE's "
               f"(floor {_num(floor_fid)}, same N); VAE samples are {'blurrier' if blurry else 'not blurrier'} "
               "than real digits and diffusion samples (mean squared pixel differences). "
               "'State-of-the-art' is relative: these are small CPU-trained models"
               + ("" if all(x is not None for x in spreads) else "; one seed only, so no spread to judge by")
               + (f"; {', '.join(disagree)} features rank the two the other way" if disagree else ""))
        rows.append(_claim(*aspect, measured, verdict, why))
    else:
        rows.append(_missing(*aspect, need))

    # 4. training objective
    aspect = ("Training", "Simple MSE", "ELBO (recon + KL)")
    if d and v:
        measured = {DIFFUSION: d.get("objective") or "n/a", VAE: v.get("objective") or "n/a"}
        if ld:
            measured[LATENT] = ld.get("objective") or "n/a"
        rows.append(_claim(*aspect, measured, "held (by construction)",
                           "this is how the models are built, not a finding; the loss curves are in 'Training stability'"))
    else:
        rows.append(_missing(*aspect, need))

    # 5. interpolation
    aspect = ("Interpolation", "Via DDIM inversion", "Direct in latent")
    di, vi = _first_with(result, DIFFUSION, "interpolation"), _first_with(result, VAE, "interpolation")
    if di and vi:
        def smooth(row, how):
            i = row["interpolation"]
            return (f"{how}: PPL {_num(i['ppl'])}, path {i['path_over_direct']:.2f}x the direct distance, "
                    f"largest step {i['largest_step']:.0%} of the path")

        measured = {DIFFUSION: smooth(di, "DDIM inversion + slerp"), VAE: smooth(vi, "slerp between posterior means")}
        recon = (vi.get("reconstruction") or {}).get("psnr")
        # the largest step's share does not depend on the feature scale or on how far apart the
        # path's ends are (the VAE's ends are blurrier reconstructions, nearer each other)
        evener = VAE if vi["interpolation"]["largest_step"] < di["interpolation"]["largest_step"] else DIFFUSION
        why = (f"each family interpolates by the method the claim names; the {evener} path moves more evenly "
               "(smaller largest step)")
        if recon:
            why += f"; the VAE's path runs between reconstructions ({recon:.1f} dB PSNR), not the images themselves"
        rows.append(_claim(*aspect, measured, "held (by construction)", why))
    else:
        rows.append(_missing(*aspect, "needs a diffusion and a vae model that can interpolate, and interpolation_pairs > 0"))

    # 6. posterior collapse
    aspect = ("Posterior collapse", "Not applicable", "Common issue")
    vl = _first_with(result, VAE, "latents")
    if vl:
        lat = vl["latents"]
        inactive = lat["latent_dim"] - lat["active_units"]
        measured = {VAE: f"{lat['active_units']} of {lat['latent_dim']} units active, KL {_num(lat.get('kl_total'))} nats"}
        if d:
            measured = {DIFFUSION: "no encoder to collapse: q(x_t|x_0) is fixed", **measured}
        fs = _first_with(result, "autoencoder", "latents")
        if fs:
            measured["autoencoder"] = f"{fs['latents']['active_units']} of {fs['latents']['latent_dim']} units active"
        verdict = "held" if inactive > 0 else "not observed"
        why = (f"{inactive} VAE latent dimensions carry no information (Var_x E[z_d] <= 0.01)" if inactive
               else "every VAE latent dimension is in use on this data")
        rows.append(_claim(*aspect, measured, verdict, why))
    else:
        rows.append(_missing(*aspect, "needs a vae model whose posterior can be read"))

    # 7. sampling speed
    aspect = ("Sampling speed", "Slower (multiple diffusion steps)", "Faster single-step sampling")
    if d and v and d.get("images_per_second") and v.get("images_per_second"):
        def speed(row):
            return f"{_num(row['images_per_second'])} images/s, {_num(row['latency_ms'])} ms per image"

        measured = {DIFFUSION: speed(d), VAE: speed(v)}
        if ld and ld.get("images_per_second"):
            measured[LATENT] = speed(ld)
        ratio = v["images_per_second"] / d["images_per_second"]
        how = f"{ratio:,.0f}x faster than" if ratio >= 1.5 else f"{ratio:.2f}x as fast as"
        why = f"the VAE samples {how} diffusion at its best FID, on this machine"
        if few and few.get("images_per_second"):
            measured[FLOW] = _flow_line(flow, speed=True)
            why += (f"; the flow-matching model at {few['nfe']} NFE ({_fid(few)}) samples "
                    f"{few['images_per_second'] / d['images_per_second']:,.1f}x as fast as the DDPM at its best "
                    f"and {few['images_per_second'] / v['images_per_second']:.2g}x as fast as the VAE")
        rows.append(_claim(*aspect, measured, "held" if ratio > 1 else "did not hold", why))
    else:
        rows.append(_missing(*aspect, need))

    # 8. training cost
    aspect = ("Training cost", "Computationally intensive, longer", "Faster, less demanding")
    if d and v and d["training"].get("cpu_seconds") and v["training"].get("cpu_seconds"):
        def cost(row, extra=0.0):
            t = row["training"]
            return f"{_num(t.get('steps'))} steps, {_num(t['cpu_seconds'] + extra)} CPU s"

        measured = {DIFFUSION: cost(d), VAE: cost(v)}
        fs = _best(result, "autoencoder")
        if ld and ld["training"].get("cpu_seconds"):
            extra = (fs or {}).get("training", {}).get("cpu_seconds") or 0.0
            measured[LATENT] = cost(ld, extra) + (" (with its first stage)" if extra else "")
        ratio = d["training"]["cpu_seconds"] / v["training"]["cpu_seconds"]
        rows.append(_claim(*aspect, measured, "held" if ratio > 1 else "did not hold",
                           f"diffusion took {ratio:.1f}x the VAE's CPU time; budgets were set per model "
                           "(each trained until its held-out numbers stopped improving much or time ran out)"))
    else:
        rows.append(_missing(*aspect, need))

    # 9. training stability and mode collapse
    aspect = ("Training stability / mode collapse", "Robust to mode collapse, diverse", "May suffer mode collapse")
    if d and v and d.get("class_balance") and v.get("class_balance"):
        def diversity(row):
            s = row.get("stability") or {}
            cb = row["class_balance"]
            curve = (f"; loss: {s['spikes']} spikes, {s['non_finite']} NaN in {s['logged']} logged steps"
                     if s else "")
            return (f"recall {_num(row.get('recall'))}, {cb['digits_covered']}/10 digits, "
                    f"class entropy {cb['normalized_entropy']:.2f}{curve}")

        measured = {DIFFUSION: diversity(d), VAE: diversity(v)}
        if ld and ld.get("class_balance"):
            measured[LATENT] = diversity(ld)
        def diverged(row):
            s = row.get("stability") or {}
            return bool(s.get("non_finite") or s.get("spikes"))

        if d.get("recall") is None or v.get("recall") is None:
            verdict = "not measured (the feature extractor gives no recall)"
        else:
            diverse = (d["recall"] >= v["recall"] and d["class_balance"]["digits_covered"] == 10
                       and not diverged(d))
            vae_collapsed = (v["class_balance"]["digits_covered"] < 10 or v["recall"] < 0.5 * d["recall"]
                             or diverged(v))
            verdict = ("held" if diverse and vae_collapsed else "partly held (diffusion diverse; VAE did not collapse)"
                       if diverse else "did not hold")
        rows.append(_claim(*aspect, measured, verdict,
                           "recall (coverage of the real data in feature space) and how evenly samples spread over "
                           "the ten digits; spikes are logged losses above 3x the late median"))
    else:
        rows.append(_missing(*aspect, need))

    # 10. latent diffusion: best of both
    aspect_ld = ("Latent diffusion", "Best of both: diffusion quality", "at a compressed latent's speed")
    if (ld and d and fid_of(ld) is not None and fid_of(d) is not None
            and ld.get("images_per_second") and d.get("images_per_second")):
        speedup = ld["images_per_second"] / d["images_per_second"]
        measured = {LATENT: f"{_fid(ld)}, {_num(ld['images_per_second'])} images/s ({ld['model']})",
                    DIFFUSION: f"{_fid(d)}, {_num(d['images_per_second'])} images/s ({d['model']})"}
        as_good = fid_of(ld) <= fid_of(d) + 2 * max(fid_spread(ld) or 0, fid_spread(d) or 0)
        verdict = "held" if as_good and speedup > 1 else "partly held" if as_good or speedup > 1 else "did not hold"
        rows.append(_claim(*aspect_ld, measured, verdict,
                           f"at its best FID latent diffusion is {speedup:.2f}x as fast as pixel diffusion at its best; "
                           f"its FID is {'within' if as_good else 'not within'} the pixel model's"))
    else:
        rows.append(_missing(*aspect_ld, "needs a latent-diffusion and a diffusion model in the suite"))
    return rows
