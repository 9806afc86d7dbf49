"""``trail widget``: a live "trending now" page and an embeddable web component.

A small ASGI server (Starlette on uvicorn) follows the ``trending`` and ``scores`` topics (or
runs the embedded replay on a dataset in demo mode) and pushes every new top-N to browsers with
Server-Sent Events.

Modules
-------
- :mod:`streams.widget.hub`: :class:`~streams.widget.hub.TrendingHub` keeps the current top-N,
  each item's recent history (per-window counts, scores and ranks: the sparkline data) and the
  rank changes against the previous window, and fans each update out to subscribers. Every
  subscriber has its own small bounded queue: a newer snapshot replaces a pending one
  (snapshots are full states, so a slow browser simply skips intermediate windows), and a
  subscriber that falls too far behind is disconnected (its browser reconnects and gets the
  current state). Publishing never waits for any browser.
- :mod:`streams.widget.sources`: :class:`~streams.widget.sources.KafkaSource` (aiokafka, no
  consumer group: every widget sees everything; undecodable records are logged and counted,
  never fatal) and :class:`~streams.widget.sources.DemoSource` (the embedded replay on a
  dataset, in a background thread, one window every ``--interval`` seconds).
  ``--no-source --allow-publish`` leaves the hub to ``POST /api/publish/...``, for tests and
  benchmarks only: that endpoint does not exist unless the flag is given.
- :mod:`streams.widget.app`: the HTTP routes. ``/`` (the page, with a strict
  Content-Security-Policy), ``/embed.js`` (the ``<trail-trending>`` custom element),
  ``/api/trending``, ``/api/history/{item_id}``, ``/events`` (SSE: ``event: trending``,
  heartbeats, ``retry:``) and ``/healthz``. The API and the event stream answer cross-origin
  GETs, so the component can be embedded anywhere. The page, its script and stylesheet and the
  component are the package data in ``static/``.
- :mod:`streams.widget.protocol`: the layer under the routes. Every response, errors included,
  carries ``X-Content-Type-Options: nosniff``; a request head over
  :data:`~streams.widget.protocol.MAX_REQUEST_HEAD_BYTES` gets 431 (and the client can read it:
  no reset).
- :mod:`streams.widget.cli`: ``trail widget`` (also ``python -m streams.widget``).

Only the standard library and :mod:`schemas` are imported at module level: the widget's
dependencies (Starlette, uvicorn, h11, aiokafka) are an optional extra, imported where used.
"""
