"""A page's elements as a browser's parser sees them (stdlib html.parser)."""

from __future__ import annotations

from html.parser import HTMLParser

# the data-plot ids of the report's own SVG plots (ptdiag.report.html_plots)
PLOT_IDS = {"loss", "grad_norm", "step_time", "memory", "memory_peak", "rank_step_time"}


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def of(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]

    def event_handlers(self) -> list[tuple[str, str]]:
        """(tag, attribute) of every on* attribute: ptdiag's pages have none."""
        return [(tag, name) for tag, attrs in self.tags for name in attrs if name.lower().startswith("on")]
