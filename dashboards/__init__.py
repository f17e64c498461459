"""The dashboards' files: `web/` (the results dashboard that the API serves at /dashboard) and `grafana/`.

A package only so that an installed (non-editable) abray carries them as package data; see api/routers/dashboard.py.
"""
