"""Shareable addresses: which view a URL opens, and the URL of the view on screen.

Deep-link forms (also in docs/app.md):

- ``?feature=N``: the feature page of feature N;
- ``?study=S`` or ``?study=S&feature=N``: study S, coloured by feature N;
- ``?tab=<id>`` with an id of :data:`TABS`: that tab (``?tab=features&q=effusion`` searches);
- no query: the Features tab.

The app reads the query when a page loads (:func:`route`) and writes the query of every view
it opens into the address bar (:func:`query`; the browser side is
:data:`workbench.ui.style.URL_JS`), so any page can be bookmarked or sent to a colleague.
Pure functions, no Gradio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlencode

from workbench.ui.render import as_int

TABS = ("features", "feature", "study", "steering", "try", "segmentation", "runs", "sql")
"""The app's tab ids in page order (``workbench.ui.app.build_app`` makes one tab per id)."""


class Route(NamedTuple):
    """What a URL asks for; ``problem`` is shown when part of it could not be understood."""

    tab: str
    feature: int | None = None
    study: int | None = None
    search: str = ""
    problem: str = ""


def _number(params: Mapping[str, str], key: str) -> tuple[int | None, str]:
    raw = params.get(key)
    if raw is None or raw == "":
        return None, ""
    value = as_int(raw)
    if value is None or value < 0 or str(raw).strip().lstrip("+") != str(value):
        return None, f"?{key}={raw} is not a {key} number"
    return value, ""


def route(
    params: Mapping[str, str], open_feature: int | None = None, tabs: tuple[str, ...] = TABS
) -> Route:
    """The view a page load opens from its query parameters (``open_feature``: the app's
    ``--open-feature`` when the URL names nothing; ``tabs``: the app's tab ids)."""
    feature, bad_f = _number(params, "feature")
    study, bad_s = _number(params, "study")
    problems = [p for p in (bad_f, bad_s) if p]
    tab = (params.get("tab") or "").strip().lower()
    if tab and tab not in tabs:
        problems.append(f"?tab={tab} is not a tab (tabs: {', '.join(tabs)})")
        tab = ""
    if not tab:
        tab = "study" if study is not None else "feature" if feature is not None else ""
    if not tab and open_feature is not None and not problems:
        tab, feature = "feature", open_feature
    return Route(
        tab=tab or "features",
        feature=feature,
        study=study,
        search=(params.get("q") or "").strip(),
        problem="; ".join(problems),
    )


def query(tab: str, feature: int | None = None, study: int | None = None, search: str = "") -> str:
    """The query string (with '?', or '' for the Features tab) of a view."""
    params: dict[str, str | int] = {}
    if tab == "study" and study is not None:
        params["study"] = study
        if feature is not None:
            params["feature"] = feature
    elif tab == "feature" and feature is not None:
        params["feature"] = feature
    elif tab == "features" and search:
        params.update(tab="features", q=search)
    elif tab != "features":
        params["tab"] = tab
    return "?" + urlencode(params) if params else ""
