"""Live metric chart: a run's metric series (runs.metrics, then metric events) drawn with textual-plotext."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class MetricChart(PlotextPlot):
    """Plots one named series; `series` maps name -> (steps, values) and is shared with the owner screen."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.current: str | None = None

    def show(self, name: str | None) -> None:
        self.current = name
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self.current and self.current in self.series:
            xs, ys = self.series[self.current]
            plt.plot(xs, ys, marker="braille")
            plt.title(self.current)
            plt.xlabel("step")
        else:
            plt.title("no metrics yet")
        self.refresh()
