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
