"""python -m dagrun"""

from .entry import main

raise SystemExit(main())
