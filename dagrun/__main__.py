"""python -m dagrun"""

from .cli import main

raise SystemExit(main())
