"""A local mnemo cluster on one machine: replicas sharing a session store behind nginx, with
Prometheus (``python3 -m deploy.local``; the harness is :mod:`deploy.local.cluster`)."""
