"""The shared kernel every part builds on: identity, errors, time, ids, cursors, events, ports, transports.

It depends on `config/` only; `chat/`, `attachments/`, `workers/` and `messenger/` depend on it.
"""
