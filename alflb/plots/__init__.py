"""Figures of alflb's results: simulations (:mod:`.simulation`) and training runs.

Plotting is the last layer of the data flow: these modules read results and run folders
and import nothing that produces them.
"""

from .simulation import (
    plot_bias_trajectories,
    plot_load_heatmap,
    plot_maxvio,
    plot_regret_curves,
    plot_regret_over_log,
    plot_t1_terms,
    save_summary_figure,
)

__all__ = [
    "plot_bias_trajectories",
    "plot_load_heatmap",
    "plot_maxvio",
    "plot_regret_curves",
    "plot_regret_over_log",
    "plot_t1_terms",
    "save_summary_figure",
]
