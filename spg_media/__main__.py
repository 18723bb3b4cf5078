"""`python -m spg_media`: the `spg-media` command (how the supervisor starts its workers)."""

from spg_media.cli import main

raise SystemExit(main())
