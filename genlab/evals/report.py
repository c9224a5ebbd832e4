"""Turn a run's metrics.json into report.md, charts, and one self-contained report.html.

The Markdown (jinja2 template in templates/) is the single source; the HTML is that Markdown
rendered by markdown-it with every image embedded, so the page can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"

HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
img {{ max-width: 100%; image-rendering: pixelated; }}
code {{ background: #f0f0f0; padding: 0 0.2em; }}
</style></head><body>
{body}
</body></html>
"""


def fmt(value, digits: int = 3) -> str:
    """Numbers as people read them: None -> n/a, large -> thousands separators."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if abs(value) < 0.01 else f"{value:.{digits}f}"
    return str(value)


def charts(result: dict, out: Path) -> dict:
    """FID against NFE (iterative samplers) and FID against images/s (every sampling model), as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .claims import fid_of

    rows = [r for r in result["models"] if fid_of(r) is not None and r.get("images_per_second")]
    floor = result["real_data_floor"]
    n = floor.get("num_images")
    made = {}

    def save(fig, name: str) -> str:
        fig.tight_layout()
        fig.savefig(out / "images" / f"{name}.png")
        plt.close(fig)
        return f"images/{name}.png"

    series: dict = {}
    for r in rows:
        if r.get("nfe", 0) > 1:
            # one line per model and setting; only the number of steps varies along it
            setting = ", ".join(f"{k} {v}" for k, v in r["options"].items() if k not in ("steps", "prompt"))
            series.setdefault(f"{r['id']} ({setting})" if setting else r["id"], []).append((r["nfe"], fid_of(r)))
    if series:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.axhline(fid_of(floor), color="gray", linestyle="--", label="real data floor")
        ax.set_xlabel("network evaluations per image (NFE)")
        ax.set_ylabel(f"FID ({result['feature_extractor']}, N={n})")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        made["fid_vs_nfe"] = save(fig, "fid_vs_nfe")
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for r in rows:
            ax.scatter(r["images_per_second"], fid_of(r))
            ax.annotate(r["model"], (r["images_per_second"], fid_of(r)), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images per second (this machine)")
        ax.set_ylabel(f"FID, N={n} (lower is better)")
        made["quality_vs_speed"] = save(fig, "quality_vs_speed")
    curves = [c for c in result.get("curves", []) if c.get("points")]
    if curves:
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for c in curves:
            ax.plot([p["cpu_seconds"] for p in c["points"]], [p["fid"] for p in c["points"]], marker="o",
                    markersize=3, label=f"{c['label']} ({c['family']})")
        ax.axhline(fid_of(floor), color="gray", linestyle="--", label="real data floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute (CPU-seconds, this machine)")
        ax.set_ylabel(f"FID ({result['feature_extractor']}, N={n})")
        ax.legend(fontsize=8)
        made["fid_vs_compute"] = save(fig, "fid_vs_compute")
    kl_rows = [r for r in result["models"] if (r.get("latents") or {}).get("kl_per_dim")]
    if kl_rows:
        fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
        seen = set()
        for r in kl_rows:
            if r["id"] in seen:
                continue
            seen.add(r["id"])  # one curve per checkpoint: rows of one model differ only in sampling options
            kl = sorted((max(k, 1e-4) for k in r["latents"]["kl_per_dim"]), reverse=True)  # log axis: 0 -> 1e-4
            ax.plot(range(1, len(kl) + 1), kl, marker="o" if len(kl) <= 64 else None, markersize=3, label=r["model"])
        ax.set_xlabel("latent dimension (sorted by KL)")
        ax.set_ylabel("KL(q(z_d|x) || N(0,1)) (nats)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        made["kl_per_dim"] = save(fig, "kl_per_dim")
    return made


def to_html(markdown_text: str, folder: Path, title: str) -> str:
    """Markdown -> one HTML page with the images it links inlined as data URIs."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)

    def inline(match):
        path = folder / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return HTML_PAGE.format(title=title, body=body)


def _unique_by(rows: list[dict], path: str) -> list[dict]:
    """The first row for each value at ``path`` ("a.b"): per-checkpoint results appear once, not
    once per sampling setting."""
    seen, unique = set(), []
    for row in rows:
        value = row
        for key in path.split("."):
            value = value[key]
        if value not in seen:
            seen.add(value)
            unique.append(row)
    return unique


def write_report(result: dict, out: Path) -> Path:
    """Write report.md and report.html into ``out``; returns the Markdown path."""
    out = Path(out)
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["unique_by"] = _unique_by
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|")  # a pipe would end the table cell
    env.filters["pm"] = lambda spread: f" ± {fmt(spread, 2)}" if spread is not None else ""
    markdown = env.get_template("report.md.j2").render(r=result, charts=charts(result, out))
    path = out / "report.md"
    path.write_text(markdown)
    (out / "report.html").write_text(to_html(markdown, out, f"genlab eval: {result['name']}"))
    return path
