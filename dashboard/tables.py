"""How the console's figure tables read: a missing figure says so in words, and every
column says, in its header's tooltip, how it is computed and over which window."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

WINDOW = "over the analytics window"
HELP: dict[str, str] = {
    # A/B arms and comparisons (the snapshot's ab section)
    "variant": "the model variant (arm)",
    "arm": "the treatment arm, compared with the control",
    "users": "users who entered the experiment (or the window) and were assigned to the arm",
    "requests": f"recommendation responses logged for the arm's users {WINDOW}",
    "recommended": f"items shown to the arm's users {WINDOW}",
    "watches": f"watches by the arm's users {WINDOW}",
    "watch_through": "watches / recommended items over the arm's users",
    "wt_low": "95% interval of watch-through over users (delta method): lower bound",
    "wt_high": "95% interval of watch-through over users (delta method): upper bound",
    "ratings": f"ratings by the arm's users {WINDOW}",
    "mean_rating": f"mean of the arm's raters' mean ratings {WINDOW}",
    "lift": "relative watch-through lift over the control (ratio of per-user means)",
    "lift_low": "95% interval of the relative lift (delta method): lower bound",
    "lift_high": "95% interval of the relative lift (delta method): upper bound",
    "fixed_p": "two-sided p of the lift at a fixed horizon (Welch with the delta method, "
               "over users): valid once, at a horizon fixed in advance",
    "always_valid_p": "mSPRT always-valid p: safe to read at every look",
    "holm_p": "always-valid watch-through p adjusted by Holm over arms and metrics",
    "chance_to_win": "posterior probability the arm beats the control (flat prior, as "
                     "GrowthBook)",
    "risk": "expected relative loss of shipping the arm if it is worse (posterior, flat "
            "prior)",
    "cuped_diff": "absolute watch-through lift adjusted by each user's watches before the "
                  "experiment (CUPED); needs users with a past",
    "cuped_variance_reduction": "1 - var(adjusted) / var(unadjusted), same users",
    "rating_diff": "difference of the raters' mean ratings against the control (Welch)",
    "rating_holm_p": "always-valid mean-rating p adjusted by Holm over arms and metrics",
    "metric": "the guardrail's figure",
    "value": f"the figure {WINDOW}",
    "max": "the guardrail's upper limit (settings)",
    "min": "the guardrail's lower limit (settings)",
    "passed": "within its limits",
    "epoch": "allocation epoch: a new one starts at every weight or arm change",
    "start": "when the epoch started (UTC)",
    "end": "when the epoch ended (UTC)",
    "weights": "allocation weights in force in the epoch",
    "srm_p": "chi-square p of the epoch's entrants against its weights (sample-ratio "
             "mismatch)",
    "srm": "mismatch when srm_p is below the SRM alpha",
    # spam detectors
    "detector": "a spam detector over the window's ratings",
    "flagged": "users the detector flags in the window",
    # drift
    "ratings_now": f"ratings by the variant's users {WINDOW} (a user belongs to the variant "
                   "of their latest recommendation in it)",
    "interactions_now": f"watches and ratings by the variant's users {WINDOW}",
    "rating_psi": "PSI of the variant's users' rating histogram (1-5) in the window against "
                  "every rating before it (the training window); not enough data when the "
                  "counts cannot tell a shift from noise",
    "rating_reading": "< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift",
    "popularity_psi": "PSI of the variant's users' watches and ratings per popularity decile "
                      "(deciles from before the window) against the training window",
    "popularity_reading": "< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift",
    # registry
    "version": "registry version (content-addressed)",
    "alias": "aliases pointing at the version (production, previous, ...)",
    "signature": "the manifest's signature and model digest, verified now",
    "ndcg": "NDCG@k on the temporal split's test users at training time",
    "coverage": "share of the catalog in the top-k lists of the test users",
    "gini": "Gini of recommendation counts per item over the test users' top-k lists",
    "rows": "training rows (ratings) the model was fitted on",
    "git": "the code's commit at training time",
    "created": "when the version was registered (UTC)",
}
MISSING = "not enough data"


def figure(value: object) -> str:
    """Four significant digits (a p of 3e-09 stays readable, not "0.0000"); whole figures
    from 1,000 up."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def styled(df: pd.DataFrame, missing: str = MISSING) -> Styler:
    """`df` with every missing figure written as `missing` (not "None" or "nan")."""
    return df.style.format(figure, na_rep=missing)


def column_help(df: pd.DataFrame, extra: dict[str, str] | None = None) -> dict:
    """Streamlit column configs carrying each known column's help text."""
    texts = HELP | (extra or {})
    return {c: st.column_config.Column(help=texts[c]) for c in df.columns if c in texts}


def show(df: pd.DataFrame, missing: str = MISSING, extra: dict[str, str] | None = None) -> None:
    """A figure table: missing figures in words, a tooltip on every known column."""
    st.dataframe(styled(df, missing), hide_index=True, column_config=column_help(df, extra))
