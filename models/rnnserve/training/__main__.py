"""`python -m rnnserve.training` runs the training command line."""

from rnnserve.training.cli import main

raise SystemExit(main())
