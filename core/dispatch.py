"""The after-commit dispatcher: in-process reactions to what a store has just committed.

A use case changes an aggregate through its store and then dispatches what happened (a record
such as `AttachmentChanged`). Reactions (push to sockets, wake the pipeline, settle the deliveries
that hold a file) are registered once, in the composition root, so no call site has to remember
them. Each reaction runs in order of registration; one that fails is logged and the others still
run: the change is committed and its events are in the log whatever a reaction does.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

H = TypeVar("H")
Reaction = Callable[[Any], Awaitable[None]]


class AfterCommit:
    def __init__(self) -> None:
        self._reactions: defaultdict[type, list[Reaction]] = defaultdict(list)

    def on(self, happening: type[H], reaction: Callable[[H], Awaitable[None]]) -> None:
        self._reactions[happening].append(reaction)

    async def dispatch(self, happening: object) -> None:
        for reaction in self._reactions.get(type(happening), ()):
            try:
                await reaction(happening)
            except Exception:
                log.exception(
                    "after-commit reaction failed",
                    extra={"happening": type(happening).__name__, "reaction": getattr(reaction, "__qualname__", "?")},
                )
