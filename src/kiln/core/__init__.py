"""The protocol-neutral core: apps, functions, calls and their inputs/outputs, the scheduler.

Frontends translate their protocol into these types; payloads the core never needs to read
(serialized arguments, results, definitions) travel as opaque bytes.
"""
