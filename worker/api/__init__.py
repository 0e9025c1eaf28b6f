"""Tinct's front door: an authenticated HTTP API and a web console over the service (``tinct serve``).

- :mod:`worker.api.app`: the ASGI application (FastAPI on uvicorn), metrics, errors, the console's static files.
- :mod:`worker.api.routes`: ``/api/v1`` routes, thin over :mod:`worker.service` and :mod:`worker.jobs`.
- :mod:`worker.api.auth`: bearer tokens, their names and prefixes.
- :mod:`worker.api.previews`: before/after previews, derived on demand and cached.
- :mod:`worker.api.serve`: the ``tinct serve`` command.
- ``static/``: the console (plain HTML, CSS and JavaScript; no build step).

Importing this package imports nothing heavy: the CLI registers ``serve`` without loading FastAPI.
"""
