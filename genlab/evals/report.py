"""Turn a run's metrics.json into report.md, charts, and one self-contained report.html.

The Markdown (jinja2 template in templates/) is the single source; the HTML is that Markdown
rendered by markdown-it with every image embedded, so the page can be mailed or opened offline.

Text in a report comes from suites (labels, names), plugins (ids, families, metric strings) and
prompts, none of which genlab wrote: every value the template prints is escaped for Markdown, and
the HTML renderer takes no raw HTML at all, so a label such as ``<img src=x onerror=...>`` shows as
text. Files are written whole or not at all.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from genlab.atomic import write_text

# What Markdown would read as markup rather than text: HTML tags and entities, links and images,
# code spans, emphasis, table cells, and the escape character itself.
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&])")


def md_text(value) -> str:
    """Any value as inert Markdown text on one line; ``Markup`` (genlab's own image paths) as is."""
    if isinstance(value, Markup):
        return str(value)
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))

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
        path = out / "images" / f"{name}.png"
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
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

    # no raw HTML: whatever a suite or plugin managed to put in the Markdown stays text
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    root = folder.resolve()

    def inline(match):
        path = (folder / match.group(1)).resolve()
        if not path.is_file() or not path.is_relative_to(root):
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return HTML_PAGE.format(title=html.escape(title), body=body)


def _unique_by(rows: list[dict], *paths: str) -> list[dict]:
    """The first row for each value at ``paths`` ("a.b"; a missing key reads None): per-checkpoint
    results appear once, not once per sampling setting."""
    seen, unique = set(), []
    for row in rows:
        values = []
        for path in paths:
            value = row
            for key in path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            values.append(json.dumps(value, sort_keys=True, default=str))
        if tuple(values) not in seen:
            seen.add(tuple(values))
            unique.append(row)
    return unique


def write_report(result: dict, out: Path) -> Path:
    """Write report.md and report.html into ``out``; returns the Markdown path."""
    out = Path(out)
    # finalize escapes every printed value (md_text), so no value can add markup to the report
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, finalize=md_text)
    env.filters["fmt"] = fmt
    env.filters["unique_by"] = _unique_by
    # per-checkpoint results are named by the model and, when not its default ones, the weights
    env.filters["checkpoint"] = lambda row: row["id"] + (f" ({row['weights']})" if row.get("weights") else "")
    env.filters["cell"] = lambda text: text  # kept for templates: every value is escaped by finalize
    env.filters["path"] = lambda path: Markup(path)  # genlab's own image paths (made of slugs)
    env.filters["pm"] = lambda spread: f" ± {fmt(spread, 2)}" if spread is not None else ""
    env.filters["pct"] = lambda share: "n/a" if share is None else f"{100 * share:.1f}%"
    try:
        charts_made = {k: Markup(v) for k, v in charts(result, out).items()}
    except Exception as exc:  # a plugin's odd numbers must not cost the report
        import warnings

        from genlab.errors import GenlabWarning, describe

        charts_made = {}
        warnings.warn(GenlabWarning(f"the report's charts could not be drawn ({describe(exc)})"), stacklevel=2)
    markdown = env.get_template("report.md.j2").render(r=result, charts=charts_made)
    path = out / "report.md"
    write_text(path, markdown)
    write_text(out / "report.html", to_html(markdown, out, f"genlab eval: {result['name']}"))
    return path
