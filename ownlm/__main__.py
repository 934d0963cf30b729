"""`python -m ownlm` runs the CLI."""

from ownlm.cli import main

raise SystemExit(main())
