"""How bytes move: channel files, their rings and wake-ups, and the sessions that own them.

Owns: :mod:`~shmbench.transport.channel` (one side of a channel file over the C rings),
:mod:`~shmbench.transport.session` (session directories, slabs, gc, the wake-up backend
choice) and :mod:`~shmbench.transport.semaphore` (the posix_ipc backend). Imports
:mod:`shmbench._ring` and :mod:`shmbench.errors` only.
"""
