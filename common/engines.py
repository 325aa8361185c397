"""Where per-item work runs: on this machine (``engine=local``) or on a Ray cluster (``engine=ray``).

Two shapes of work, each with both engines:

* :func:`map_tasks`: one stateless function call per item (``common.preprocess``: one clip). Local: worker
  processes of this machine (``spawn``; one in-process loop for one worker). Ray: one Ray *task* per item,
  ``num_cpus_per_task`` CPUs each, retried by Ray when the process running it dies (``max_retries``).
* :class:`WorkerPool`: stateful workers that load a model once and serve many items (``generate_batch``, the
  benchmark). Local: one worker in this process. Ray: ``num_workers`` *actors*, ``num_gpus_per_worker`` GPUs
  each, restarted by Ray when they die; every item goes to the next free actor.

Why Ray core tasks and actors rather than Ray Data: our resume unit is one item whose outputs (and record) are
written by the worker itself, atomically, into shared storage; a rerun lists what is finished and submits the
rest. Items stream through a bounded window of in-flight calls (``ray.wait``), so results arrive, are recorded
and shown in the progress bar as each finishes, and a failed or timed-out item is just that item's record.
Ray Data's streaming executor works on blocks of rows and owns batching, ordering and retries itself, which
would add a second notion of "done" beside our per-item files.

Ray is optional: ``engine=local`` never imports it. With ``engine=ray``, ``ray.address`` is ``null`` (start a
Ray instance on this machine for the run), ``auto`` (the cluster this machine belongs to: ``ray start``) or
``HOST:PORT`` of a head node. Every node needs this package installed (same version) and the same view of the
input and output storage (a shared file system, or an fsspec URL such as ``s3://``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from common.errors import UserError

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclasses.dataclass
class RaySettings:
    """The ``ray.*`` options (``conf/common/ray/default.yaml``)."""

    address: str | None = None
    num_cpus_per_task: float = 1.0
    num_gpus_per_worker: float = 0.0
    num_workers: int | None = None
    max_retries: int = 3
    num_cpus: int | None = None

    @classmethod
    def from_values(cls, values: Any) -> RaySettings:
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(
                f"unknown ray option(s) {', '.join('ray.' + u for u in unknown)}; known: {sorted(names)}"
            )
        return cls(**values).check()

    def check(self) -> RaySettings:
        from common import limits

        limits.number(self.num_cpus_per_task, "ray.num_cpus_per_task=", 0, 1024, low_open=True)
        limits.number(self.num_gpus_per_worker, "ray.num_gpus_per_worker=", 0, 64)
        limits.number(self.max_retries, "ray.max_retries=", 0, 100, integer=True)
        if self.num_workers is not None:
            limits.number(self.num_workers, "ray.num_workers=", 1, 100000, integer=True, hint="or null")
        if self.num_cpus is not None:
            limits.number(self.num_cpus, "ray.num_cpus=", 1, 100000, integer=True, hint="or null")
        if self.address is not None and not isinstance(self.address, str):
            raise UserError(f"ray.address={self.address!r}: null, auto or HOST:PORT")
        return self


def check_engine(engine: Any) -> str:
    if engine not in ENGINES:
        raise UserError(f"engine={engine!r}: choose local (this machine) or ray (a Ray cluster)")
    return engine


def pin_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in this process (torch and the BLAS libraries); None leaves them."""
    if threads is None:
        return
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(threads)


def check_threads(threads: Any, name: str = "threads_per_worker=") -> int | None:
    """CPU threads per worker: null (the libraries' default) or a whole number from 1 to 1024."""
    if threads is None:
        return None
    from common import limits

    return limits.number(threads, name, 1, 1024, integer=True, hint="or null for the libraries' default")


def connect(settings: RaySettings, threads: int | None = None) -> Any:
    """Join (or start) the Ray cluster of ``settings``; returns the ``ray`` module.

    ``threads``: the thread variables (``OMP_NUM_THREADS``, ...) of the workers this job starts.
    """
    try:
        import ray
    except ImportError:
        raise UserError(
            "engine=ray needs Ray: pip install 'talking-portrait[ray]' (or pip install ray)"
        ) from None
    if ray.is_initialized():
        return ray
    env = {name: str(threads) for name in THREAD_VARIABLES} if threads else {}
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        # Workers' own logs stay in Ray's session folder (/tmp/ray/session_latest/logs): a failed item is one
        # line of its command's record, a worker that cannot start one error line here, never a worker's traceback.
        "log_to_driver": False,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if settings.address is None:
        kwargs["num_cpus"] = settings.num_cpus
    started = time.perf_counter()
    try:
        ray.init(address=settings.address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = settings.address or "a new local instance"
        raise UserError(
            f"ray.address={settings.address}: cannot join the Ray cluster at {where} ({err}); start one with "
            "`ray start --head` and pass ray.address=auto, or leave ray.address=null for a local instance"
        ) from None
    log.info("Ray cluster joined in %.1f s: %s", time.perf_counter() - started, ray.cluster_resources())
    return ray


# --------------------------------------------------------------------------------------------
# stateless tasks
# --------------------------------------------------------------------------------------------


def _call(fn: Callable, threads: int | None, args: tuple) -> Any:
    pin_threads(threads)
    return fn(*args)


def map_tasks(
    fn: Callable,
    jobs: Iterable[tuple],
    *,
    engine: str = "local",
    num_workers: int = 1,
    ray_settings: RaySettings | None = None,
    threads: int | None = None,
) -> Iterator[Any]:
    """``fn(*job)`` for every job, yielding results as they finish (in any order).

    ``fn`` must be a module-level function (it is sent to other processes by reference). Exceptions are the
    caller's: a function that must not stop the run records its own failures and returns them.
    """
    jobs = list(jobs)
    if not jobs:
        return
    if engine == "ray":
        yield from _ray_tasks(fn, jobs, ray_settings or RaySettings(), threads)
        return
    if num_workers <= 1 or len(jobs) == 1:
        for job in jobs:
            yield fn(*job)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # MediaPipe and torch are not fork-safe
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        pending = {pool.submit(_call, fn, threads, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def _ray_tasks(fn: Callable, jobs: list[tuple], settings: RaySettings, threads: int | None) -> Iterator[Any]:
    ray = connect(settings, threads)
    remote = ray.remote(_call).options(
        num_cpus=settings.num_cpus_per_task,
        max_retries=settings.max_retries,
        name=getattr(fn, "__name__", "task"),
    )
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1) / settings.num_cpus_per_task))
    queue = iter(jobs)
    in_flight = [remote.remote(fn, threads, job) for job in itertools.islice(queue, window)]
    while in_flight:
        done, in_flight = ray.wait(in_flight, num_returns=1)
        yield ray.get(done[0])
        job = next(queue, None)
        if job is not None:
            in_flight.append(remote.remote(fn, threads, job))


# --------------------------------------------------------------------------------------------
# stateful workers (a model loaded once)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ItemResult:
    """What became of one item: ``value`` (the worker's return) or ``error`` (one line), after ``attempts``."""

    index: int
    value: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0


class ItemTimeout(Exception):
    """An item ran past its ``timeout_s``."""


class _Worker:
    """Runs ``factory()`` once, then ``worker(item, deadline)`` per item; errors come back as text."""

    def __init__(self, factory: Callable[[], Callable], threads: int | None) -> None:
        pin_threads(threads)
        self.work = factory()

    def run(self, item: Any, timeout_s: float | None) -> tuple[bool, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            return True, self.work(item, deadline)
        except Exception as err:  # recorded per item; the worker lives on
            if not isinstance(err, UserError | ItemTimeout):
                log.warning("item failed with an unexpected error", exc_info=True)
            return False, _one_line(err)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_deadline(deadline: float | None, what: str = "the item") -> None:
    """Raise :class:`ItemTimeout` once ``deadline`` (``time.monotonic()``) has passed (workers call this often)."""
    if deadline is not None and time.monotonic() > deadline:
        raise ItemTimeout(f"{what} ran past its timeout_s")


class WorkerPool:
    """Items through workers that each build their state once with ``factory`` (a module-level callable).

    ``factory()`` returns ``work(item, deadline) -> value``; ``work`` should call :func:`check_deadline` as it
    goes (per denoising step), which is how ``timeout_s`` stops an item on either engine. On Ray the driver
    also kills an actor whose item runs ``grace_s`` past its timeout (a hang outside those checks) and starts a
    new one. An item that fails (an exception, a timeout, its worker dying) is tried again up to ``max_retries``
    times, except for :class:`~common.errors.UserError`\\ s, which another try cannot fix.
    """

    def __init__(
        self,
        factory: Callable[[], Callable],
        *,
        engine: str = "local",
        ray_settings: RaySettings | None = None,
        threads: int | None = None,
        grace_s: float = 60.0,
    ) -> None:
        self.factory = factory
        self.engine = check_engine(engine)
        self.ray_settings = ray_settings or RaySettings()
        self.threads = threads
        self.grace_s = grace_s

    def run(
        self, items: list[Any], *, timeout_s: list[float | None], max_retries: list[int]
    ) -> Iterator[ItemResult]:
        """Yield one :class:`ItemResult` per item as each finishes (its last attempt)."""
        if not items:
            return
        if self.engine == "ray":
            yield from self._run_ray(items, timeout_s, max_retries)
            return
        worker = _Worker(self.factory, self.threads)
        for index, item in enumerate(items):
            attempts = 0
            while True:
                attempts += 1
                start = time.perf_counter()
                ok, value = worker.run(item, timeout_s[index])
                if _last_attempt(ok, value, attempts, max_retries[index]):
                    yield _result(index, ok, value, attempts, time.perf_counter() - start)
                    break

    def _run_ray(self, items: list[Any], timeout_s: list, max_retries: list) -> Iterator[ItemResult]:
        ray = connect(self.ray_settings, self.threads)
        settings = self.ray_settings
        actor_class = ray.remote(_Worker).options(
            num_cpus=settings.num_cpus_per_task,
            num_gpus=settings.num_gpus_per_worker,
            max_restarts=settings.max_retries,
        )
        count = settings.num_workers or self._default_workers(ray)
        count = max(1, min(count, len(items)))
        actors = [actor_class.remote(self.factory, self.threads) for _ in range(count)]
        free = list(range(count))
        queue = list(range(len(items)))[::-1]
        attempts = [0] * len(items)
        running: dict[Any, tuple[int, int, float]] = {}  # ref -> (item, actor, start)

        def restart(slot: int) -> None:
            ray.kill(actors[slot])
            actors[slot] = actor_class.remote(self.factory, self.threads)

        try:
            while queue or running:
                while queue and free:
                    index, slot = queue.pop(), free.pop()
                    attempts[index] += 1
                    ref = actors[slot].run.remote(items[index], timeout_s[index])
                    running[ref] = (index, slot, time.monotonic())
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                now = time.monotonic()
                for ref in done:
                    index, slot, start = running.pop(ref)
                    try:
                        ok, value = ray.get(ref)
                    except ray.exceptions.RayActorError as err:
                        if getattr(err, "actor_init_failed", False):  # every worker would fail the same way
                            raise UserError(f"the Ray workers cannot start: {_creation_error(err)}") from None
                        ok, value = False, f"WorkerDied: the worker running it died ({_one_line(err)})"
                        restart(slot)
                    free.append(slot)
                    if _last_attempt(ok, value, attempts[index], max_retries[index]):
                        yield _result(index, ok, value, attempts[index], now - start)
                    else:
                        queue.append(index)
                for ref, (index, slot, start) in list(running.items()):
                    limit = timeout_s[index]
                    if limit is not None and now - start > limit + self.grace_s:
                        running.pop(ref)
                        restart(slot)
                        free.append(slot)
                        if attempts[index] > max_retries[index]:
                            message = f"ItemTimeout: ran {now - start:.0f} s, past timeout_s={limit:g} (worker restarted)"
                            yield _result(index, False, message, attempts[index], now - start)
                        else:
                            queue.append(index)
        finally:
            for actor in actors:
                ray.kill(actor)

    def _default_workers(self, ray: Any) -> int:
        resources = ray.cluster_resources()
        if self.ray_settings.num_gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) / self.ray_settings.num_gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) / self.ray_settings.num_cpus_per_task))


def _last_attempt(ok: bool, value: Any, attempts: int, max_retries: int) -> bool:
    """Whether an attempt ends its item: it worked, the retries are spent, or the input was bad (a
    :class:`~common.errors.UserError`, which another try cannot fix)."""
    return ok or attempts > max_retries or value.startswith("UserError")


def _creation_error(err: BaseException) -> str:
    """The line of a failed actor creation that says why (its own exception), else the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line.removeprefix("common.errors.")
    return lines[0] if lines else type(err).__name__


def _result(index: int, ok: bool, value: Any, attempts: int, seconds: float) -> ItemResult:
    if ok:
        return ItemResult(index=index, value=value, attempts=attempts, seconds=seconds)
    return ItemResult(index=index, error=str(value), attempts=attempts, seconds=seconds)
