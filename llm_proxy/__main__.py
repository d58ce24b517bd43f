"""``python -m llm_proxy`` runs the command line."""

from .cli import main

raise SystemExit(main())
