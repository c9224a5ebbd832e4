"""Turn a run's metrics.json into report.md (jinja2 template in templates/)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"


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


def write_report(result: dict, out: Path) -> Path:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    path = Path(out) / "report.md"
    path.write_text(env.get_template("report.md.j2").render(r=result))
    return path
