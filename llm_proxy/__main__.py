"""``python -m llm_proxy`` runs the command line."""

from .cli.main import main

raise SystemExit(main())
