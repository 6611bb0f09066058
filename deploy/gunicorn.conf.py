"""gunicorn settings for camvoice web processes (the same as `camvoice serve` uses).

gunicorn -c deploy/gunicorn.conf.py 'service.app:create_app()'
"""

import os

bind = os.environ.get("CAMVOICE_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("CAMVOICE_WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("CAMVOICE_WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 10  # in-flight requests finish on SIGTERM; the load balancer drains first
keepalive = 5
accesslog = None  # request lines carry stream tickets and codes in URLs: never log them
control_socket_disable = True

# CAMVOICE_LOG_FORMAT=json: gunicorn's own lines are JSON too (service/logs.py).
if os.environ.get("CAMVOICE_LOG_FORMAT", "").lower() == "json":
    logconfig_dict = {"formatters": {"generic": {"()": "service.logs.JSONFormatter"}}}

# With /metrics on, the workers share a folder for their values (emptied in on_starting); set
# before any worker imports prometheus_client, which reads it at import.
if os.environ.get("CAMVOICE_METRICS_TOKEN"):
    data_dir = os.environ.get("CAMVOICE_DATA_DIR", "instance")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(data_dir, "prometheus"))


def on_starting(server):
    """Before any worker: an empty PROMETHEUS_MULTIPROC_DIR (last run's values would add up)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        from pathlib import Path

        from service.metrics import share_between_workers

        share_between_workers(Path(folder))


def child_exit(server, worker):
    """A dead worker's live gauges (relays, WebRTC sessions) stop counting."""
    from service.metrics import worker_exited

    worker_exited(server, worker)
