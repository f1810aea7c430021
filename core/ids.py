"""Identifiers: 128 random bits as hex, unguessable, so an id in a URL is no key to anything else."""

from __future__ import annotations

import uuid


def new_id() -> str:
    return uuid.uuid4().hex
