from mcp_secrets.cli import main

raise SystemExit(main())
