"""The daemon's periodic jobs (scan, analysis, housekeeping, threshold checks): the ``schedule`` library's
scheduler held to the monotonic clock, and how soon a job that last ran long ago is due."""

import datetime

import schedule

# A step in which the library's clock moved this much more (or less) than the monotonic one is a jump of the
# wall clock (set by hand, by NTP stepping it, or the change from summer time), not the loop's own pace.
JUMP_SECONDS = 1.0


def first_delay(last_run, now, every):
    """Seconds from now until a job that runs ``every`` seconds and last ran at ``last_run`` (wall clock; None:
    never) is due: at once when overdue, and never more than ``every`` (a last run in the future: the clock
    was set back since)."""
    if last_run is None:
        return 0.0
    return min(every, max(0.0, last_run + every - now))


def _library_now():
    """The clock the library times its jobs by: the naive local ``datetime.now()``."""
    return schedule.datetime.datetime.now()


class Schedule:
    """The main loop's periodic jobs, on a ``schedule.Scheduler``. Owned by the main loop.

    The library times each job by the naive local time: a clock set back an hour, or the autumn change from
    summer time, would hold every job for that hour, and a clock set forward would run them all at once. Each
    step measures how far the local clock moved beyond the monotonic one and moves every job's next run by as
    much, so the time left to each job is what the monotonic clock says.
    """

    def __init__(self, clock):
        self.clock = clock
        self._scheduler = schedule.Scheduler()
        self._local, self._monotonic = _library_now(), clock.monotonic()

    def every(self, seconds, action, *args, first_in=None):
        """Run ``action(*args)`` every ``seconds``, the first time after ``first_in`` (default: ``seconds``)."""
        job = self._scheduler.every(seconds).seconds.do(action, *args)
        if first_in is not None:
            job.next_run = _library_now() + datetime.timedelta(seconds=first_in)

    def run_pending(self, held=lambda: False):
        """Run the jobs that are due, each at most once; the next run is an interval after this one ended.

        ``held()`` true (another process holds the database's lock) stops the round: the jobs not run stay
        due, and a job during which it became true runs again as soon as it is false."""
        self._follow_clock_jumps()
        for job in sorted(job for job in self._scheduler.jobs if job.should_run):
            if held():
                return
            job.run()
            self._follow_clock_jumps(ran=job)  # a jump during the job: the library timed this one after it
            if held():
                job.next_run = _library_now()

    def _follow_clock_jumps(self, ran=None):
        local, monotonic = _library_now(), self.clock.monotonic()
        jump = (local - self._local).total_seconds() - (monotonic - self._monotonic)
        self._local, self._monotonic = local, monotonic
        if abs(jump) >= JUMP_SECONDS:
            for job in self._scheduler.jobs:
                if job is not ran:
                    job.next_run += datetime.timedelta(seconds=jump)
