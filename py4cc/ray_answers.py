"""The Ray backend's answers: the callbacks that read a call's result, and the sorting out
of a dead actor's calls (a part of :class:`py4cc.ray_backend.RayBackend`).

An answer arrives through its ObjectRef's future callback, on a Ray thread; an actor's death
through its ``watch`` call or a failed call, handed to the supervisor, which reads what the
dead actor's calls left (without the lock: it may block).
"""

from __future__ import annotations

from typing import Any

from .protocol import FAILED, OK, Answer, GeneralCall, unpickle_answer
from .ray_actors import Actor, RayActors
from .ray_connect import death_reason
from .stats import RunTimes
from .tasks import Task

RESOLVE_S = 30.0
"""How long the supervisor waits for a dead actor's calls to end (Ray ends them as soon as
it knows of the death; a merely unreachable actor is killed first)."""


class RayAnswers(RayActors):
    """Reading answers (the attributes are set by :class:`py4cc.ray_backend.RayBackend`)."""

    run_times: RunTimes

    def arm(self, launched: list[tuple[Actor, Task, Any]]) -> None:
        for actor, task, ref in launched:
            ref.future().add_done_callback(lambda fut, actor=actor, task=task: self.on_answer(actor, task, fut))

    def on_answer(self, actor: Actor, task: Task, fut: Any) -> None:
        """A call has ended: record the answer, send the next task. An actor's death is the
        supervisor's to sort out."""
        try:
            try:
                flag, value, message, run_s = self.answer_of(task, fut.result())
            except self.ray.exceptions.RayActorError:
                self.post("died", actor, fut)
                return
            except BaseException as exc:  # the call itself failed: only this task is concerned
                flag, value, message, run_s = (
                    FAILED,
                    -1,
                    f"the Ray actor could not run this task: {death_reason(exc)}",
                    0.0,
                )
            with self.lock:
                self.take_off(actor, task)
                if not task.done:
                    self.run_times.add(run_s)
                    self.complete(task, flag, value, message)
                launched = self.dispatch()
            self.arm(launched)
        except BaseException:  # a callback must not raise into Ray
            pass

    @staticmethod
    def answer_of(task: Task, result: tuple) -> tuple:
        """``(flag, value, message, run_s)`` of a call's result; a general task's value
        unpickled here, outside the lock (an answer that cannot be unpickled fails its task)."""
        flag, value, message, run_s = result
        if flag == OK and type(task.call) is GeneralCall:
            answer = unpickle_answer(Answer(task.key, flag, value, message, run_s, True))
            return answer.flag, answer.value, answer.message, answer.run_s
        return flag, value, message, run_s

    def on_death(self, actor: Actor, detail: Any) -> None:
        """An actor has died (its watch or a call failed): the call it was running fails, those
        queued behind it go back to the queue, its slot starts another."""
        with self.lock:
            if self.stopping() or actor not in self.actors:
                return  # dealt with already (timed out, a second notice), or moot
            actor.dead = True
            outstanding = list(actor.queue)
        self.kill(actor)  # if only unreachable for now: its calls must end, and now
        reason = death_reason(detail) if isinstance(detail, BaseException) else "it died"
        if not isinstance(detail, BaseException) and detail is not None:
            try:
                detail.result()
            except BaseException as exc:
                reason = death_reason(exc)
        # Each call's own outcome: the first one the death cut short was running, the ones
        # after it had not started; one answered before the death keeps its answer.
        outcomes: list[tuple[str, Any]] = []
        for task, ref in outstanding:
            try:
                outcomes.append(("answer", self.answer_of(task, self.ray.get(ref, timeout=RESOLVE_S))))
            except self.ray.exceptions.RayActorError:
                outcomes.append(("died", None))
            except BaseException as exc:
                outcomes.append(("failed", exc))
        with self.lock:
            if self.stopping():
                return
            running: Task | None = None
            requeue = []
            for (task, _), (kind, value) in zip(outstanding, outcomes):
                if task.done:
                    continue
                if kind == "answer":
                    self.run_times.add(value[3])
                    self.complete(task, *value[:3])
                elif kind == "failed":
                    self.complete(task, FAILED, -1, f"the Ray actor could not run this task: {death_reason(value)}")
                elif running is None:
                    running = task
                    self.complete(
                        task,
                        FAILED,
                        -1,
                        f"the Ray actor running this task ({actor.describe()}) died; it is being replaced. "
                        f"Ray says: {reason}",
                    )
                else:
                    task.deadline = None
                    requeue.append(task)
            self.pending.extendleft(reversed(requeue))
            actor.queue.clear()
            if running is not None:
                self.event(actor.pid, f"died while running task {running.key}: {reason}")
            else:
                self.event(actor.pid, f"died {'while idle' if actor.ready else 'before it was ready'}: {reason}")
            self.lose_actor(actor, f"died: {reason}")
            launched = self.dispatch()
        self.arm(launched)

    def on_init(self, actor: Actor, fut: Any) -> None:
        """A new actor's ``initialize`` has answered (or it died starting)."""
        try:
            ok, pid, node, detail = fut.result()
        except BaseException as exc:
            self.on_death(actor, exc)
            return
        self.note_identity(actor, pid, node)
        with self.lock:
            if self.stopping() or actor not in self.actors:
                return
            actor.init_ref = None
            if ok:
                actor.host = detail
                actor.ready = True
                actor.slot.failures = 0
            else:
                actor.failure = detail
                self.event(pid, f"failed to initialise its engine:\n{detail}")
                self.lose_actor(actor, "failed to initialise its engine")
        if not ok:
            self.kill(actor)
            return
        self.watch(actor)
        with self.lock:
            launched = self.dispatch()
        self.arm(launched)
