"""dagrun's state on disk: everything it keeps lives in ``.dagrun/`` beside the manifest.

    lock            lock.py       one flock: a build, ``clean``, ``touch`` and the no-op check
    log             log.py        the completion log: the journal of what ran, and why
    cache           cache.py      compiled graph, stat cache, keys, the log's index
    cache.journal   cache.py      what partial builds changed in the cache since it was written
    fresh           proof.py      the no-op proof: what the last build's decisions rest on
    runs/           executors     a task's command and output (kept when it printed or failed)

One integrity format (checksum.py): every state file carries the zlib.crc32 of its
bytes -- the binary ones (cache, journal, proof) as four bytes at the end, each log
line as 8 hex digits in its last field -- and a file or line that does not match is
not used (at worst, everything is checked again).  Deleting ``.dagrun/`` is always
safe.  This package and its ``checksum``, ``lock`` and ``proof`` modules import only
the standard library's smallest modules: the no-op check runs before anything else.
"""

STATE_DIR = ".dagrun"  # beside the manifest; never an input, never removed by `clean`
