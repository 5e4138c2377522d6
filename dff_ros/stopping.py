"""SIGINT and SIGTERM as one exception in the main thread, once.

rclpy's own handler shuts the ROS context down the moment a signal arrives, under the threads
that are still training, publishing and calling services; they then fail with "context is
invalid" tracebacks, and the servers go on training an abandoned run. dff_ros processes take
the signal themselves: the first SIGINT or SIGTERM raises ``Interrupted`` in the main thread
(or, in a process whose main thread spins rclpy's EventsExecutor, only sets ``STOPPING`` for
its loop to see: an exception raised inside a callback that C++ called aborts the process),
which stops the work, tells the other nodes (the master drops its run's layers on the servers)
and only then shuts ROS down. Later signals are ignored meanwhile: a terminal's Ctrl-C reaches
every process of the group and `ros2 launch` sends its own SIGINT after it, and neither may cut
the cleanup short. Every cleanup step has a short timeout of its own (``CLEANUP_SECONDS``).
Exit codes follow the shell's convention, 128 + the signal (130, 143).
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
CLEANUP_SECONDS = 1.5   # the most one cleanup step (a service call, joining a worker) may take
STOPPING = threading.Event()   # set from the first signal on
_received: list[int] = []


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the process stops, after dropping its work; ``exit_code`` is 130
    or 143."""
    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def check() -> None:
    """Raise ``Interrupted`` if a signal has come (the poll point of a loop)."""
    if _received:
        raise Interrupted(_received[0])


def install(*, raise_now: bool = True) -> None:
    """Take SIGINT and SIGTERM in this process (call from the main thread). ``raise_now``:
    raise ``Interrupted`` where the main thread is; else only set ``STOPPING`` (see ``check``)."""
    def handler(signum, frame) -> None:
        if STOPPING.is_set():
            return
        _received.append(signum)
        STOPPING.set()
        if raise_now:
            raise Interrupted(signum)

    for s in SIGNALS:
        signal.signal(s, handler)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from now on: at the end of a process. Python's finalization
    puts the default handlers back, and a second signal then (`launch` sends its own SIGINT
    after the terminal's) would kill a process that has already cleaned up."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def rclpy_init(args=None, *, raise_now: bool = True) -> None:
    """``rclpy.init`` without rclpy's signal handlers, and ours installed (see ``install``)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    install(raise_now=raise_now)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
