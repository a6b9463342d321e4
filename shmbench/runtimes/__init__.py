"""How a server process is started and stopped: plain process, bubblewrap, Apptainer.

Owns: :mod:`~shmbench.runtimes.base` (the Runtime interface and the shared lifecycle),
:mod:`~shmbench.runtimes.process`, :mod:`~shmbench.runtimes.bwrap`,
:mod:`~shmbench.runtimes.apptainer` (+ finding the binary, its versions, a spython client),
:mod:`~shmbench.runtimes.apptainer_tools` (pull, inspect, instances) and
:mod:`~shmbench.runtimes.selection` (choosing one). Imports transport (session names) and
images (a SIF is unpacked for bwrap).
"""
