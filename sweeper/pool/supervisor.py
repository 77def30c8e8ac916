"""Supervising one phase of a launch on a pool: start the workers, hand them their context once
it is made, start again those that die while work remains, stop them all at the end or on
Ctrl-C. It knows processes and callbacks, not trials: the launcher says whether work remains
and what to do at each poll (the progress bar, the figure drawer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sweeper.pool.interface import LaunchContext, Pool

POLL_S = 1.0


def supervise(
    pool: Pool,
    commands: list[list[str]],
    setup: Callable[[], LaunchContext],
    work_remains: Callable[[], bool],
    each_poll: Sequence[Callable[[], None]] = (),
    on_interrupt: Callable[[], None] = lambda: None,
) -> bool:
    """Run the workers until every one has ended; False if interrupted (Ctrl-C, SIGTERM). Whether
    they all gave up is pool.slots.all_gave_up() then.

    While the workers import torch and MLflow (seconds), setup() opens what they work on and
    returns the launch context each reads on its stdin. Each callback of
    `each_poll` runs at every poll and once after the workers ended.

    On Ctrl-C, on_interrupt() lets go of what the launcher held when the interrupt came (a
    database transaction it cut, which the stopping workers wait for) before the workers are
    stopped and waited for."""
    # A local pool's fork server has been importing torch since the pool was made, and its first
    # fork waits for that: the stores open meanwhile. Ray actors start only now: they start first.
    context = setup() if pool.local else None
    pool.start(commands)
    interrupted = False
    try:
        pool.slots.hand((context or setup()).line())
        while pool.slots.supervise(work_remains):
            for callback in each_poll:
                callback()
            pool.wait(POLL_S)
        for callback in each_poll:
            callback()
    except KeyboardInterrupt:
        interrupted = True  # stopped below, once the frames the interrupt cut are let go
    except BaseException:  # the launcher stops: its workers must not run on, orphaned
        pool.stop()
        raise
    if interrupted:
        on_interrupt()
    pool.stop()  # all ended: only Ray actors have something to let go
    return not interrupted
