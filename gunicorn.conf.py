"""gunicorn settings for a CPU-bound model server: few workers, a few threads, the cores split between workers."""
import multiprocessing
import os

bind = os.environ.get("GUITARS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUITARS_WORKERS", max(1, min(4, multiprocessing.cpu_count()))))
# Threads overlap request parsing and image decoding with another request's forward pass.
threads = int(os.environ.get("GUITARS_THREADS", 2))
worker_class = "gthread"
timeout = int(os.environ.get("GUITARS_TIMEOUT", 60))
graceful_timeout = 30
# Recycled now and then, so memory a worker has kept from past requests goes back; jitter: never all at once.
max_requests = int(os.environ.get("GUITARS_MAX_REQUESTS", 1000))
max_requests_jitter = max(1, max_requests // 10)
accesslog = "-"
# The request id (webapp/logs.py) on every access line; GUITARS_LOG_FORMAT=json: one JSON object per line.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
if os.environ.get("GUITARS_LOG_FORMAT") == "json":
    from webapp.logs import gunicorn_json_logger

    logger_class = gunicorn_json_logger()
errorlog = "-"
loglevel = os.environ.get("GUITARS_LOG_LEVEL", "info")
# No preload: torch must not start its thread pools in the master, because a fork after that can hang.
preload_app = False


def post_worker_init(worker):
    """Give the worker its share of the cores, then load the model before it takes traffic."""
    # Here, not in post_fork: until a worker has installed its signal handlers, a stop signal reaches the master's
    # inherited handler and is lost, and importing torch there kept a starting worker unstoppable for 30 s.
    import torch

    from webapp.model import EXTENSION

    # OpenVINO and ONNX Runtime read torch's thread count, so workers don't fight over the cores.
    torch.set_num_threads(max(1, multiprocessing.cpu_count() // workers))
    torch.set_num_interop_threads(1)
    holder = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
    if holder is not None:  # another app served with this file (bench/serve.py's baseline) loads its own model
        holder.get()
        from webapp.service import current_decoders

        with worker.wsgi.app_context():
            current_decoders()  # the decoder processes start before traffic, as the model does
    headroom_mb = int(os.environ.get("GUITARS_WORKER_MEMORY_MB", 0))
    if headroom_mb:  # deploy/serve.sh sets it: an allocation past the cap is one request's error, not the machine's
        from training.decoding import limit_address_space

        limit_address_space(headroom_mb * 1024 * 1024)
# gunicorn's control socket lives at one path per user: several servers on a machine would fight over it; unused here.
control_socket_disable = True


def on_starting(server):
    """One fresh folder for every worker's Prometheus counts (prometheus_client's multiprocess mode)."""
    import shutil
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:  # the operator's folder: counts of an earlier server would be added to ours
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    else:
        # In memory where there is a tmpfs: every counted request writes its file, and nothing of it is worth a disk.
        shared_memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="guitars-metrics.", dir=shared_memory)


def child_exit(server, worker):
    """A worker that has gone no longer counts in the live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The counts die with the server: its folder goes (an operator's own folder is emptied at the next start)."""
    import shutil

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(folder).startswith("guitars-metrics."):
        shutil.rmtree(folder, ignore_errors=True)
