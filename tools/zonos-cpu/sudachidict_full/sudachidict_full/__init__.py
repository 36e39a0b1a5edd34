"""`sudachidict_full` served from sudachidict-core's dictionary, for CPU test machines only.

Why: upstream Zonos builds `sudachipy.Dictionary(dict="full")` when `zonos.conditioning` is
imported (for Japanese readings). The real `sudachidict-full` package downloads its ~450 MB
dictionary while it builds, which cannot happen on machines without internet, and there is no
wheel. sudachipy finds a dictionary package by its module name and reads
`Path(module.__file__).parent / "resources" / "system.dic"`; pointing `__file__` at
sudachidict_core's package makes it read the core dictionary (same format, smaller vocabulary:
Japanese readings of common words are the same).

GPU images install the real `sudachidict-full` with Zonos from source and never install this.
"""

import sudachidict_core as _core

__file__ = _core.__file__  # sudachipy reads resources/system.dic beside this path
