"""/dashboard: the results dashboard (dashboards/web), served with plotly's own JavaScript bundle."""

from fastapi import APIRouter

router = APIRouter(tags=["dashboard"])
