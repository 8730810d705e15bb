"""Writing figures: HTML (plotly.js beside the pages, opens offline) and PNG (kaleido + Chromium).

Every plotting function of icon2-lens returns a figure and never shows it; this module saves
them. It imports nothing of icon2_lens.

Example:
    >>> import tempfile, plotly.graph_objects as go
    >>> paths = write_figures({"toy": go.Figure(go.Scatter(y=[1, 2]))}, tempfile.mkdtemp(), png=False)
    >>> [p.name for p in paths]
    ['toy.html']
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["PALETTE", "plotly_go", "write_figures", "write_figures_or_warn"]

logger = logging.getLogger(__name__)

PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""One colour per series, in order (plotly's default qualitative colours)."""


def plotly_go():
    """``plotly.graph_objects``, imported on first use."""
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # pragma: no cover - plotly is a core dependency
        raise ImportError("plots need plotly: pip install plotly") from e
    return go


def _export_png(figs: list, paths: list[Path], *, scale: float) -> None:
    """Render figures to PNG with kaleido in one browser session, fully offline.

    plotly.js comes from the installed plotly package; MathJax (kaleido would fetch it from a
    CDN) is turned off, since no label here uses LaTeX. The layout's size is passed explicitly
    because kaleido otherwise uses its default 700 x 500.
    """
    import kaleido

    specs = [
        {
            "fig": fig.to_plotly_json(),
            "path": path,
            "opts": {
                "format": "png",
                "width": fig.layout.width or 800,
                "height": fig.layout.height or 500,
                "scale": scale,
            },
        }
        for fig, path in zip(figs, paths)
    ]
    kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})


def write_figures(
    figs: Mapping[str, "go.Figure"],
    folder: str | Path,
    *,
    png: bool = True,
    html: bool = True,
    scale: float = 1.5,
) -> list[Path]:
    """Write each figure as ``<name>.html`` (plotly.js in a shared ``plotly.min.js`` beside the
    pages, so they open offline) and, if ``png``, ``<name>.png``.

    PNG export uses kaleido, which drives a local Chrome/Chromium (Debian package ``chromium``;
    ``scripts/install.sh`` installs it). Raises a ``RuntimeError`` naming that fix if it fails.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items() if html else ():
        path = folder / f"{name}.html"
        # "directory": one shared plotly.min.js beside the pages; works offline, keeps pages small
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        written.append(path)
    if png and figs:
        paths = [folder / f"{name}.png" for name in figs]
        try:
            _export_png(list(figs.values()), paths, scale=scale)
        except Exception as e:
            raise RuntimeError(
                f"PNG export failed ({type(e).__name__}: {e}). It needs kaleido>=1 and a local "
                "Chrome/Chromium: run scripts/install.sh, or 'apt-get install chromium', or set "
                "BROWSER_PATH to a Chrome binary; pass png=False (CLI: --no-png) to skip PNGs."
            ) from e
        written.extend(paths)
    return written


def write_figures_or_warn(
    figs: Mapping[str, "go.Figure"], folder: str | Path, *, png: bool = True
) -> list[Path]:
    """:func:`write_figures`, but a failed PNG export only logs a warning (the HTML files stay)."""
    try:
        return write_figures(figs, folder, png=png)
    except RuntimeError as e:
        logger.warning("%s — wrote HTML figures only", e)
        return write_figures(figs, folder, png=False)
