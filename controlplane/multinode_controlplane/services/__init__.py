"""The control plane's logic. No FastAPI here: routers and loops call these functions."""
