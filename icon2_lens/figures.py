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

__all__ = ["OFFLINE_BROWSER_ARGS", "PALETTE", "plotly_go", "write_figures", "write_figures_or_warn"]

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


#: Chromium switches that keep the PNG browser off the network. Measured with Debian's Chromium
#: 156 in an empty network namespace (strace of connect, and Chromium's --log-net-log): with only
#: choreographer's own switches, one render asked for clients2.google.com (network time),
#: update.googleapis.com (the component updater, which ignores --disable-component-update for its
#: on-demand "Optimization Guide On Device Models Manifest") and start.duckduckgo.com (the first
#: tab loaded the default search engine's new-tab page), with 37 connect() calls to the DNS server
#: and to a public IPv6 address (the resolver's reachability probe). With these switches: no
#: AF_INET/AF_INET6 connect at all, and byte-identical PNGs.
OFFLINE_BROWSER_ARGS: tuple[str, ...] = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--dns-prefetch-disable",
    "--no-pings",
    "--disable-features=DnsOverHttps,NetworkTimeServiceQuerying,OptimizationHints,"
    "OptimizationGuideModelDownloading,OptimizationGuideOnDeviceModel,MediaRouter,Translate,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,"
    "InterestFeedContentSuggestions",
    # the update check reads a local file that answers nothing (an http:// source, even
    # 127.0.0.1, still runs the resolver's IPv6 probe: a UDP connect to a public address)
    "--component-updater=url-source=file:///dev/null",
    # a backstop for a request these do not stop: no host name is looked up in DNS, the request
    # ends in ERR_NAME_NOT_RESOLVED (alone, this still leaves the resolver's IPv6 probe)
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "about:blank",  # the first tab: otherwise the default search engine's new-tab page
)


def _offline_chromium() -> type:
    """choreographer's Chromium with :data:`OFFLINE_BROWSER_ARGS` appended to its command line.

    kaleido passes unknown keyword arguments on to ``choreographer.Browser``, which accepts
    ``browser_cls``; choreographer's ``Chromium`` takes no extra switches, so a subclass adds them.
    """
    from choreographer.browsers import Chromium

    class OfflineChromium(Chromium):
        def get_cli(self):
            return [*super().get_cli(), *OFFLINE_BROWSER_ARGS]

    return OfflineChromium


def _export_png(figs: list, paths: list[Path], *, scale: float) -> None:
    """Render figures to PNG with kaleido in one browser session, fully offline.

    plotly.js comes from the installed plotly package; MathJax (kaleido would fetch it from a
    CDN) is turned off, since no label here uses LaTeX. The layout's size is passed explicitly
    because kaleido otherwise uses its default 700 x 500. The browser runs without extensions and
    with :data:`OFFLINE_BROWSER_ARGS`, so it contacts nothing either (an image a figure links by
    URL is not fetched).
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
    kopts = {"mathjax": False, "browser_cls": _offline_chromium(), "enable_extensions": False}
    kaleido.write_fig_from_object_sync(specs, kopts=kopts)


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
