"""Plotly figures of stored results, and their data as tables (CSV / JSON) and standalone HTML.

Pure functions of a `Result` (or of its arrays): no Streamlit, no torch. Every view of the app has a
figure builder and a `*_table` that holds exactly the numbers the figure draws, so what a user
downloads is what they saw. One module per concern: `base` (look, cells, export), `chaos`, `cone`,
`linear`, `transition`, `present` (presentation mode); every public name is importable from here.
"""

from __future__ import annotations

from .base import (  # noqa: F401
    COMMAND_NOTE,
    LAYOUT,
    LINE_COLOURS,
    METRICS,
    PROJECTION_LABELS,
    ZERO_AXIS,
    Table,
    add_zero_row,
    apply_layout,
    cell_value,
    config_from_result,
    from_csv,
    log_colour,
    log_range,
    rgba,
    round_sig,
    seed_reduce,
    table_rows,
    to_csv,
    to_frame,
    to_html,
    to_json,
    zero_marks,
    zeros_to_row,
)
from .chaos import (  # noqa: F401
    CELL_FONT_PX,
    CELL_PAD_PX,
    HEATMAP_PLOT_PX,
    cell_label,
    cell_text_size,
    chaos_cell_at,
    chaos_cells,
    chaos_heatmap,
    chaos_heatmap_table,
    chaos_path,
    chaos_path_table,
    chaos_sections,
    chaos_sections_table,
    text_px,
)
from .cone import (  # noqa: F401
    APEXES,
    DEFAULT_APEX,
    RAY_COLOUR,
    cone_acc_table,
    cone_against_null,
    cone_angles,
    cone_neigh_table,
    cone_neighbours,
    cone_projection,
    cone_projection_table,
    cone_ray_ends,
    cone_ref_curves,
    cone_ref_table,
    cone_S_heatmap,
    cone_S_table,
    cone_test_acc,
    fmt_angle,
    honest_view,
    ray_angle_drawn,
    ray_angle_kernel,
)
from .linear import linear_figure, linear_table  # noqa: F401
from .present import MIN_FONT_PX, PRESENT, Presentation, present, text_width, wrap  # noqa: F401
from .training import (  # noqa: F401
    has_training_curve,
    live_stage,
    training_curve,
    training_curve_table,
)
from .transition import (  # noqa: F401
    TRANSITION_METRICS,
    chaos_sections_band,
    chaos_sections_band_table,
    chaos_transition_group,
    phase_diagram_figure,
    phase_diagram_table,
    stack_replicates,
    too_few_points,
    transition_curve_table,
    transition_figure,
    transition_summary_table,
    transition_summary_text,
)
